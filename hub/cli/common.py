"""Shared pieces of the operator CLI: the context object, output and failure helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import click

from hub.config import Settings
from hub.crypto.hubkeys import HubKeyError, HubKeys, load_hub_keys
from hub.crypto.hubstate import open_store
from hub.envelope import Outgoing
from hub.store import Store, StoreError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(slots=True)
class HubContext:
    settings: Settings
    as_json: bool = False
    verbosity: int = 0  # -v minus -q
    local_time: bool = False  # --local-time: human output in the local zone instead of UTC
    _store: Store | None = field(default=None)

    def store(self) -> Store:
        if self._store is None:
            try:
                self._store = open_store(self.settings)
            except (StoreError, HubKeyError) as exc:
                fail(str(exc), code=3)
        return self._store

    def keys(self) -> HubKeys:
        try:
            return load_hub_keys(self.settings)
        except HubKeyError as exc:
            fail(str(exc), code=3)


pass_hub = click.make_pass_decorator(HubContext)


def json_option(func: F) -> F:
    def set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value and isinstance(ctx.obj, HubContext):
            ctx.obj.as_json = True
        return value

    return click.option("--json", "as_json", is_flag=True, expose_value=False, callback=set_json,
                        is_eager=True, help="Machine-readable JSON output.")(func)


def emit(hub: HubContext, data: Any, human: Callable[[Any], None]) -> None:
    if hub.as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        human(data)


def fail(message: str, code: int = 1, **details: Any) -> NoReturn:
    """Print the error and exit with ``code``: with ``--json`` a JSON object on standard output
    (``{"error": message, "exit_code": code, **details}``), otherwise ``error: message`` on standard error."""
    ctx = click.get_current_context(silent=True)
    hub = ctx.find_object(HubContext) if ctx is not None else None
    if (hub is not None and hub.as_json) or (hub is None and "--json" in sys.argv[1:]):
        click.echo(json.dumps({"error": message, "exit_code": code, **details}, sort_keys=True, default=str))
    else:
        click.secho(f"error: {message}", err=True, fg="red" if sys.stderr.isatty() else None)
    sys.exit(code)


def announce_or_explain(hub: HubContext, announcements: list[Outgoing], stored: str, retry: str) -> None:
    """Publish announcements of something already stored; when the broker does not take them, say that it is
    stored and how to announce it again (exit 3)."""
    from hub.appraisal.operations import publish_once
    from hub.broker.transport import TransportError

    try:
        publish_once(hub.settings, announcements, f"{hub.settings.hub_id}-cli")
    except TransportError as exc:
        fail(f"{stored} is stored, but it was not announced: {exc}. Running workers adopt it when they restart; "
             f"to announce it once the broker is back: {retry}", code=3, stored=stored, announced=False, retry=retry)
