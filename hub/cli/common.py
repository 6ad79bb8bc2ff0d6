"""Shared pieces of the operator CLI: the context object, output and failure helpers."""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import click

from hub.config import Settings
from hub.crypto.hubkeys import HubKeyError, HubKeys, load_hub_keys
from hub.crypto.hubstate import missing_state_dir_message, open_store
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

    def close(self) -> None:
        """Release the database (called when the command ends): no connection, lock or file handle outlives it."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def keys(self) -> HubKeys:
        if not self.settings.state_dir.is_dir():  # the keys live there: say how to make one, not "no such file"
            fail(missing_state_dir_message(self.settings), code=3)
        try:
            return load_hub_keys(self.settings)
        except HubKeyError as exc:
            if isinstance(exc.__cause__, OSError) and exc.__cause__.filename is not None:  # a key file: name it
                fail(f"key file {describe_os_error(exc.__cause__)}", code=3)
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


def broker_address(hub: HubContext) -> str:
    """``host:port`` of the broker a command publishes to (--broker, or the configuration)."""
    return f"{hub.settings.broker_host}:{hub.settings.broker_port}"


def announce_or_explain(hub: HubContext, announcements: list[Outgoing], stored: str, retry: str,
                        *, newly_stored: bool = True) -> str:
    """Publish announcements of something stored; returns the broker's ``host:port`` for the success message.
    When the broker does not take them, say (exit 3) that it is stored (``newly_stored``: by this command) but
    not announced, and how to announce it again."""
    from hub.appraisal.operations import publish_once
    from hub.broker.transport import TransportError

    broker = broker_address(hub)
    try:
        publish_once(hub.settings, announcements, f"{hub.settings.hub_id}-cli")
    except TransportError as exc:
        state = "is stored, but was not announced" if newly_stored else "stays stored; it was not announced"
        fail(f"{stored} {state}: {exc}. Running workers adopt it when they restart; to announce it once the "
             f"broker at {broker} is back: {retry}", code=3, stored=stored, announced=False, retry=retry,
             broker=broker)
    return broker


def describe_os_error(exc: OSError) -> str:
    """One line for a file the command could not read or write: ``PATH: reason`` (no errno, no repr)."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno == errno.ENOENT and exc.filename is not None:
        reason = "no such file or directory" if os.path.isdir(os.path.dirname(str(exc.filename)) or ".") \
            else "its folder does not exist"
    where = exc.filename if exc.filename is not None else "file"
    return f"{where}: {reason[:1].lower()}{reason[1:]}"


def describe_decode_error(exc: UnicodeDecodeError) -> str:
    """One line for input that is not UTF-8 text: which byte, and that text was expected."""
    return f"the input is not UTF-8 text (byte {exc.start}: {exc.reason}); is it a binary file given for a text one?"


class HubGroup(click.Group):
    """The command group: a file a command cannot read or write, input that is not text, or a closed output pipe
    end the command with one line (``fail``) instead of a traceback. Reading or writing a path the operator
    named is invalid input (exit 1); a closed pipe (``| head``) is a normal end (exit 0)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _silence_stdout()
            sys.exit(0)
        except OSError as exc:
            if exc.filename is None:  # a socket or device, not a path the operator named
                fail(f"{exc.strerror or type(exc).__name__}", code=3)
            fail(describe_os_error(exc))
        except UnicodeDecodeError as exc:
            fail(describe_decode_error(exc))


def _silence_stdout() -> None:
    """After the reader of standard output went away, send what is still buffered nowhere (no second error)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (a test runner's buffer): nothing to silence
        pass
