"""``attest-hub api`` (the HTTP API and console alone), ``attest-hub token`` and ``attest-hub result verify``."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from hub.appraisal.report import parse_duration
from hub.appraisal.results import ResultError, verify_result
from hub.cli.common import HubContext, emit, fail, json_option, pass_hub
from hub.server.api.tokens import SCOPES, TokenError, create_token, list_tokens, revoke_token
from hub.store import StoreError
from hub.store.views import latest_result


@click.command("api")
@click.option("--host", default=None, help="Bind address (default: api_host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: api_port, 8080).")
@pass_hub
def api(hub: HubContext, host: str | None, port: int | None) -> None:
    """Serve the HTTP API (/v1), its OpenAPI document and the web console, without a worker.

    `serve` serves the same application on metrics_port + N of each worker.
    Example: attest-hub --state-dir var api --port 8080
    """
    from hub.broker.enforcement import enforcer_from_settings
    from hub.server.api.app import build_app
    from hub.server.api.context import ApiContext
    from hub.server.api.serve import serve_in_thread, uvicorn_config

    settings = hub.settings
    address = host or settings.api_host
    bind = port or settings.api_port
    ctx = ApiContext(settings, hub.store(), hub.keys(), enforcer=enforcer_from_settings(settings))
    try:
        stop_server = serve_in_thread(uvicorn_config(build_app(ctx), settings, address, bind))
    except OSError as exc:
        fail(str(exc), code=3)
    scheme = "https" if settings.api_tls_cert else "http"
    click.echo(f"console: {scheme}://{address}:{bind}/console/  API document: {scheme}://{address}:{bind}/v1/schema",
               err=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    stop_server()


@click.group()
def token() -> None:
    """Bearer tokens for the HTTP API and the console (stored hashed)."""


@token.command("create")
@click.option("--name", required=True, help="Who or what holds it (shown in the audit log as token:NAME).")
@click.option("--scope", type=click.Choice(SCOPES), required=True,
              help="read: look; operate: also quarantine, release, challenge, revoke.")
@click.option("--expires-in", default=None, metavar="DURATION", help="e.g. 90d, 12h (default: no expiry).")
@json_option
@pass_hub
def token_create(hub: HubContext, name: str, scope: str, expires_in: str | None) -> None:
    """Create a token; it is printed once and cannot be shown again.

    Example: attest-hub token create --name grafana --scope read --expires-in 90d
    """
    try:
        ttl = parse_duration(expires_in) if expires_in else None
        text, row = create_token(hub.store(), name, scope, ttl_s=ttl)
    except (TokenError, ValueError) as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(str(exc), code=3)
    emit(hub, {"token": text, **row}, lambda d: click.echo(d["token"]))


@token.command("list")
@json_option
@pass_hub
def token_list(hub: HubContext) -> None:
    """List tokens (id, name, scope, created, expiry, revoked); never their secrets."""
    try:
        rows = list_tokens(hub.store())
    except StoreError as exc:
        fail(str(exc), code=3)

    def human(items: list[dict[str, object]]) -> None:
        table = Table("id", "name", "scope", "created", "expires", "revoked")
        for r in items:
            table.add_row(str(r["token_id"]), str(r["name"]), str(r["scope"]), _when(r["created_at"]),
                          _when(r["expires_at"]), _when(r["revoked_at"]))
        Console().print(table)

    emit(hub, rows, human)


def _when(at: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(at))) if isinstance(at, (int, float)) else "-"


@token.command("revoke")
@click.argument("token_id")
@pass_hub
def token_revoke(hub: HubContext, token_id: str) -> None:
    """Revoke a token by its id (from `token list`); it stops working at once."""
    try:
        revoke_token(hub.store(), token_id)
    except TokenError as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(str(exc), code=3)
    click.echo(f"token {token_id} revoked")


@click.group()
def result() -> None:
    """Attestation results the hub signed."""


@result.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
                required=False)
@click.option("--device", "device_id", default=None, help="Verify the device's latest stored result instead.")
@json_option
@pass_hub
def result_verify(hub: HubContext, file: Path | None, device_id: str | None) -> None:
    """Check a result's signature with the hub key and print its claims (exit 1 if it does not verify).

    \b
    Examples:
      curl -H "Authorization: Bearer $T" http://127.0.0.1:8080/v1/devices/env-sensor-0001/result > r.cbor
      attest-hub result verify r.cbor
      attest-hub result verify --device env-sensor-0001 --json
    """
    if (file is None) == (device_id is None):
        fail("give a FILE or --device ID", code=2)
    if file is not None:
        raw = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    else:
        try:
            with hub.store().reading() as conn:
                row = latest_result(conn, str(device_id))
        except StoreError as exc:
            fail(str(exc), code=3)
        if row is None:
            fail(f"no stored result for {device_id!r}")
        raw = bytes(row["signed"])
    try:
        view = verify_result(raw, hub.keys().public_key)
    except ResultError as exc:
        fail(str(exc))
    emit(hub, view.to_json(), _print_result)


def _print_result(d: dict[str, object]) -> None:
    click.echo(f"signature: verified with the hub key\ndevice: {d['device_id']}\n"
               f"issued: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(float(str(d['issued_at']))))}")
    submods = d["submods"]
    assert isinstance(submods, dict)
    for name, appraisal in submods.items():
        click.echo(f"{name}: {appraisal['status']}  trust vector {json.dumps(appraisal['trust_vector'])}")
    problems = d["problems"]
    click.echo(f"problems: {'; '.join(problems) if isinstance(problems, list) and problems else '-'}")
    click.echo(f"evidence {d['evidence_ref']}  manifest {d['manifest_ref'] or '-'}  policy {d['policy_ref']}  "
               f"action {d['action']}" + (f"  nonce {d['nonce']}" if d.get("nonce") else ""))
