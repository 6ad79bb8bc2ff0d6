"""``attest-hub api`` (the HTTP API and console alone) and ``attest-hub token``."""

from __future__ import annotations

import signal
import threading
import time

import click
from rich.table import Table

from hub.appraisal.report import parse_duration
from hub.cli.common import HubContext, emit, fail, json_option, pass_hub
from hub.cli.output import stdout_console
from hub.server.api.tokens import SCOPES, TokenError, create_token, list_tokens, revoke_token
from hub.store import StoreError


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
    """List tokens (id, name, scope, created, expiry, revoked); never their secrets.

    Example: attest-hub token list --json
    """
    try:
        rows = list_tokens(hub.store())
    except StoreError as exc:
        fail(str(exc), code=3)

    def human(items: list[dict[str, object]]) -> None:
        table = Table("id", "name", "scope", "created", "expires", "revoked")
        for r in items:
            table.add_row(str(r["token_id"]), str(r["name"]), str(r["scope"]), _when(r["created_at"]),
                          _when(r["expires_at"]), _when(r["revoked_at"]))
        stdout_console().print(table)

    emit(hub, rows, human)


def _when(at: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(at))) if isinstance(at, (int, float)) else "-"


@token.command("revoke")
@click.argument("token_id")
@json_option
@pass_hub
def token_revoke(hub: HubContext, token_id: str) -> None:
    """Revoke a token by its id (from `token list`); it stops working at once.

    Example: attest-hub token revoke 1ab4e6ab619f
    """
    try:
        revoke_token(hub.store(), token_id)
    except TokenError as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(str(exc), code=3)
    emit(hub, {"token_id": token_id, "revoked": True}, lambda d: click.echo(f"token {d['token_id']} revoked"))
