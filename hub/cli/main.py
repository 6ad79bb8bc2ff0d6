"""``attest-hub``: the verifier service and the operator's commands.

Exit codes: 0 success; 1 the action was refused or the input is invalid
(the message says why); 2 usage error; 3 an infrastructure fault (broker or
database unreachable, key files missing).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from hub.cli.anomalies import anomalies
from hub.cli.api import api, result, token
from hub.cli.audit import audit, report
from hub.cli.common import HubContext, emit, fail, pass_hub
from hub.cli.db import db
from hub.cli.device import device
from hub.cli.manifest import manifest
from hub.cli.pki import pki
from hub.cli.policy import policy
from hub.cli.whatif import whatif
from hub.config import ConfigError, load_settings
from hub.crypto.hubkeys import HubKeyError, init_state, load_hub_keys
from hub.crypto.keys import public_pem
from hub.server.logs import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              envvar="ATTEST_HUB_CONFIG", help="TOML configuration file (env ATTEST_HUB_CONFIG).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the hub keeps its keys and SQLite database.")
@click.option("--database-url", default=None, help="SQLAlchemy URL; default sqlite in the state dir.")
@click.option("--broker", "broker", default=None, metavar="HOST:PORT", help="MQTT broker address.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, state_dir: Path | None, database_url: str | None,
        broker: str | None, verbose: int) -> None:
    """Fleet attestation hub: verifies COSE-signed evidence from IoT devices over MQTT.

    \b
    Example:
      attest-hub --state-dir var init
      attest-hub --state-dir var device enroll --file fleet.json
      attest-hub --state-dir var serve --broker 127.0.0.1:1883
    """
    host, port = None, None
    if broker:
        host, _, port_text = broker.rpartition(":")
        if not host or not port_text.isdigit():
            raise click.BadParameter("expected HOST:PORT", param_hint="--broker")
        port = int(port_text)
    try:
        settings = load_settings(config_path, state_dir=state_dir, database_url=database_url,
                                 broker_host=host, broker_port=port)
    except ConfigError as exc:
        fail(f"configuration: {exc}", code=1)
    configure_logging(verbose)
    ctx.obj = HubContext(settings)


@cli.command()
@pass_hub
def init(hub: HubContext) -> None:
    """Create the state directory, the hub's signing key and nonce secret (idempotent).

    Example: attest-hub --state-dir var init
    """
    init_state(hub.settings)
    keys = hub.keys()
    emit(hub, {"state_dir": str(hub.settings.state_dir), "hub_public_key": public_pem(keys.public_key)},
         lambda d: click.echo(f"state in {d['state_dir']}; hub public key:\n{d['hub_public_key']}"))


@cli.command("hub-key")
@pass_hub
def hub_key(hub: HubContext) -> None:
    """Print the hub's public key (PEM): devices verify commands and results with it."""
    click.echo(public_pem(hub.keys().public_key), nl=False)


@cli.command()
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="Worker processes (default from config).")
@pass_hub
def serve(hub: HubContext, workers: int | None) -> None:
    """Run the verifier: consume evidence, appraise, store, publish results, quarantine.

    Example: attest-hub --state-dir var serve --workers 2
    """
    from hub.server.supervisor import run_workers

    settings = hub.settings
    count = workers or settings.workers
    try:
        load_hub_keys(settings)
    except HubKeyError as exc:
        fail(str(exc), code=3)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_workers(settings, count, stop)


@cli.group()
def config() -> None:
    """Inspect the effective configuration."""


@config.command("show")
@pass_hub
def config_show(hub: HubContext) -> None:
    """Print the effective configuration (file + environment + options), secrets masked."""
    data = hub.settings.masked()
    emit(hub, data, lambda d: click.echo("\n".join(f"{k} = {json.dumps(v, default=str)}" for k, v in d.items())))


@cli.command()
@click.option("--devices", type=click.IntRange(2, 10_000), default=50, show_default=True)
@click.option("--seconds", type=click.FloatRange(5, 600), default=25.0, show_default=True,
              help="How long the fleet runs before the table is printed.")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the demo's state (database, keys) in this directory.")
@click.option("--linger", type=click.FloatRange(0, 86400), default=0.0, show_default=True,
              help="Seconds to keep the hub and its web console up after the fleet stops.")
def demo(devices: int, seconds: float, keep: Path | None, linger: float) -> None:
    """Start a broker, the hub and a simulated fleet; serve the web console; print every device's verdict."""
    from hub.cli.demo import run_demo

    configure_logging(0)
    sys.exit(run_demo(devices, seconds, keep, linger))


cli.add_command(device)
cli.add_command(anomalies)
cli.add_command(manifest)
cli.add_command(pki)
cli.add_command(policy)
cli.add_command(audit)
cli.add_command(report)
cli.add_command(whatif)
cli.add_command(db)
cli.add_command(api)
cli.add_command(token)
cli.add_command(result)


def main() -> Any:
    logging.captureWarnings(True)
    return cli(prog_name="attest-hub")
