"""``attest-hub broker run --dev|--prod``: render a shipped Mosquitto configuration, run the broker in the foreground.

The configuration templates are ``broker_config/dev.conf`` and ``prod.conf`` (package data in a wheel). The
rendered file, Mosquitto's persistence and its log go to ``--data-dir``. The process is replaced by
Mosquitto (``exec``), so a service manager's signals reach the broker.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import click

from hub.broker.process import BrokerError, MosquittoProcess, render_acl
from hub.cli.common import fail

__all__ = ["broker"]


@click.group()
def broker() -> None:
    """Run the MQTT broker (Mosquitto) with the shipped development or production configuration."""


@broker.command("run")
@click.option("--dev", "mode", flag_value="dev", help="dev.conf: loopback only, anonymous, persistent.")
@click.option("--prod", "mode", flag_value="prod", help="prod.conf: mutual TLS, certificate CN as identity, ACL file.")
@click.option("--host", default=None, help="Listen address [dev: 127.0.0.1 (always); prod: 0.0.0.0].")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="TCP port [dev: 1883; prod: 8883].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("var/broker"),
              show_default=True, help="Rendered configuration, persistence (mosquitto.db) and mosquitto.log.")
@click.option("--pki", "pki_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="--prod: directory with ca.crt, server.crt and server.key ('attest-hub pki').")
@click.option("--hub-workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="--prod: hub worker identities (hub-w0 ...) granted the hub's topics in the rendered ACL.")
@click.option("--print-config", is_flag=True, help="Print the rendered configuration and exit.")
def run(mode: str | None, host: str | None, port: int | None, data_dir: Path, pki_dir: Path | None,
        hub_workers: int, print_config: bool) -> None:
    """Render the configuration into --data-dir and run Mosquitto in the foreground (Ctrl-C stops it).

    \b
    Examples:
      attest-hub broker run --dev --port 1883
      attest-hub pki init-ca --dir pki && attest-hub pki server --dir pki && attest-hub pki hub --dir pki --cn w0
      attest-hub broker run --prod --pki pki --port 8883 --hub-workers 2
    """
    if mode is None:
        raise click.UsageError("give --dev or --prod")
    data_dir = data_dir.resolve()
    values: dict[str, str] = {}
    if mode == "prod":
        if pki_dir is None:
            raise click.UsageError("--prod needs --pki DIR (ca.crt, server.crt, server.key from 'attest-hub pki')")
        pki_dir = pki_dir.resolve()
        files = {"cafile": pki_dir / "ca.crt", "certfile": pki_dir / "server.crt", "keyfile": pki_dir / "server.key"}
        missing = [str(path) for path in files.values() if not path.is_file()]
        if missing:
            fail(f"missing TLS material: {', '.join(missing)} (create it with 'attest-hub pki')", code=3)
        data_dir.mkdir(parents=True, exist_ok=True)
        acl = data_dir / "acl"
        try:
            acl.write_text(render_acl([f"w{n}" for n in range(hub_workers)]), encoding="utf-8")
        except BrokerError as exc:
            fail(str(exc), code=3)
        values = {name: str(path) for name, path in files.items()} | {"acl_file": str(acl)}
    listen = "127.0.0.1" if mode == "dev" else (host or "0.0.0.0")  # noqa: S104 (the broker's public listener)
    if mode == "dev" and host not in (None, "127.0.0.1"):
        raise click.UsageError("--dev listens on 127.0.0.1 only (anonymous clients); use --prod for other hosts")
    try:
        default_port = 1883 if mode == "dev" else 8883
        process = MosquittoProcess(f"{mode}.conf", data_dir, host=listen, port=port or default_port, values=values)
        config = process.render_config()
    except BrokerError as exc:
        fail(str(exc), code=3)
    if print_config:
        click.echo(config.read_text(encoding="utf-8"), nl=False)
        return
    _check_port_free(listen, process.port)
    binary = process.binary
    click.echo(f"mosquitto ({mode}.conf) on {listen}:{process.port}; configuration {config}; "
               f"log {process.log_path}", err=True)
    os.execv(binary, [binary, "-c", str(config)])  # noqa: S606 (the broker replaces this process)


def _check_port_free(host: str, port: int) -> None:
    """Refuse (exit 3, one line) a port another program listens on, before Mosquitto would fail into its log."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free for Mosquitto
        try:
            probe.bind((host, port))
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {(exc.strerror or str(exc)).lower()} (another broker or program "
                 "uses the port; stop it or give another --port)", code=3)
