"""``attest-hub pki``: create the CA and issue the broker, hub worker and device certificates."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from hub.crypto import pki as pkilib

__all__ = ["pki"]

F = TypeVar("F", bound=Callable[..., Any])

_DIR_HELP = "CA directory (holds ca.crt and ca.key)."


def _common_options(func: F) -> F:
    func = click.option("--json", "as_json", is_flag=True, help="Print the written paths as JSON.")(func)
    func = click.option("--force", is_flag=True, help="Overwrite existing files.")(func)
    func = click.option("--days", type=click.IntRange(min=1), default=None, help="Validity in days.")(func)
    return func


def _out_option(func: F) -> F:
    return click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Directory for the new certificate and key (default: the CA directory).",
    )(func)


def _dir_option(func: F) -> F:
    return click.option(
        "--dir", "ca_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help=_DIR_HELP
    )(func)


def _report(as_json: bool, kind: str, common_name: str, cert: Path, key: Path, ca_cert: Path) -> None:
    if as_json:
        click.echo(
            json.dumps(
                {"kind": kind, "common_name": common_name, "cert": str(cert), "key": str(key), "ca": str(ca_cert)},
                sort_keys=True,
            )
        )
    else:
        click.echo(f"{kind} {common_name!r}: certificate {cert}, key {key} (mode 0600), CA {ca_cert}")


def _days(days: int | None, default: int) -> int:
    return default if days is None else days


@click.group(name="pki")
def pki() -> None:
    """Certificates for the broker's mutual TLS (CN = broker username = device id)."""


@pki.command("init-ca")
@_dir_option
@click.option("--cn", default="Fleet Attestation CA", show_default=True, help="CA common name.")
@_common_options
def init_ca(ca_dir: Path, cn: str, days: int | None, force: bool, as_json: bool) -> None:
    """Create a self-signed P-256 CA in --dir.

    Example: attest-hub pki init-ca --dir pki
    """
    try:
        ca = pkilib.create_ca(ca_dir, cn, days=_days(days, 3650), overwrite=force)
    except pkilib.PkiError as exc:
        raise click.ClickException(str(exc)) from exc
    _report(as_json, "ca", cn, ca.cert_path, ca.key_path, ca.cert_path)


@pki.command("server")
@_dir_option
@_out_option
@click.option("--cn", default="localhost", show_default=True, help="Server certificate common name.")
@click.option("--dns", "dns_names", multiple=True, help="SAN DNS name (repeatable; default: localhost).")
@click.option("--ip", "ip_addresses", multiple=True, help="SAN IP address (repeatable; default: 127.0.0.1).")
@_common_options
def server(
    ca_dir: Path,
    out: Path | None,
    cn: str,
    dns_names: tuple[str, ...],
    ip_addresses: tuple[str, ...],
    days: int | None,
    force: bool,
    as_json: bool,
) -> None:
    """Issue the broker's server certificate (server.crt, server.key).

    Example: attest-hub pki server --dir pki --dns broker.example.net --ip 127.0.0.1
    """
    try:
        ca = pkilib.load_ca(ca_dir)
        issued = pkilib.issue_server_cert(
            ca,
            out or ca_dir,
            cn,
            dns_names=dns_names or ("localhost",),
            ip_addresses=ip_addresses or ("127.0.0.1",),
            days=_days(days, 825),
            overwrite=force,
        )
    except pkilib.PkiError as exc:
        raise click.ClickException(str(exc)) from exc
    _report(as_json, "server", issued.common_name, issued.cert_path, issued.key_path, ca.cert_path)


@pki.command("hub")
@_dir_option
@_out_option
@click.option("--cn", "name", required=True, help="Hub worker name; the CN becomes hub-<name>.")
@_common_options
def hub_cert(ca_dir: Path, out: Path | None, name: str, days: int | None, force: bool, as_json: bool) -> None:
    """Issue a hub worker's client certificate (CN hub-<name>).

    Example: attest-hub pki hub --dir pki --cn w0
    """
    try:
        ca = pkilib.load_ca(ca_dir)
        issued = pkilib.issue_hub_cert(ca, out or ca_dir, name, days=_days(days, 825), overwrite=force)
    except pkilib.PkiError as exc:
        raise click.ClickException(str(exc)) from exc
    _report(as_json, "hub", issued.common_name, issued.cert_path, issued.key_path, ca.cert_path)


@pki.command("device")
@_dir_option
@_out_option
@click.option("--cn", "device_id", required=True, help="Device id (certificate CN, broker username, topic segment).")
@_common_options
def device(ca_dir: Path, out: Path | None, device_id: str, days: int | None, force: bool, as_json: bool) -> None:
    """Issue a device's client certificate (CN = device id).

    Example: attest-hub pki device --dir pki --cn env-sensor-0001
    """
    try:
        pkilib.validate_device_id(device_id)  # before touching the CA: the cheapest refusal first
        ca = pkilib.load_ca(ca_dir)
        issued = pkilib.issue_device_cert(ca, out or ca_dir, device_id, days=_days(days, 3650), overwrite=force)
    except pkilib.PkiError as exc:
        raise click.ClickException(str(exc)) from exc
    _report(as_json, "device", issued.common_name, issued.cert_path, issued.key_path, ca.cert_path)
