"""``attest-hub serve``: check the infrastructure, say where the hub listens, run the workers.

Infrastructure faults (hub keys missing, database or broker unreachable, a
worker in a crash loop) end in :class:`ServeError` with a one-line message;
the CLI prints it and exits 3 (the documented code), never a traceback. A
configuration the hub refuses to serve with (no operator keys, an archive
folder it cannot create or write) is a :class:`ServeRefused`, exit 1. The
start-up checks run the most basic first (``preflight``), so the first line
names the problem to fix first.
"""

from __future__ import annotations

import logging
import socket
import threading

from hub.appraisal.retention import ArchiveError, check_archive
from hub.broker.enforcement import EnforcementError
from hub.broker.transport import TransportError
from hub.config import Settings
from hub.crypto.hubkeys import HubKeyError, load_hub_keys
from hub.crypto.hubstate import StateLock, check_announced, open_store, stamp_database, state_dir_problem
from hub.crypto.keys import KeyFileError
from hub.server.announced import BrokerUnreachable, announced
from hub.server.presence import wait_for_earlier_workers
from hub.server.supervisor import CrashLoopError, run_workers
from hub.store import StoreError

log = logging.getLogger(__name__)

_FAULTS = (HubKeyError, KeyFileError, StoreError, TransportError, EnforcementError, CrashLoopError)


class ServeError(RuntimeError):
    """An infrastructure fault at start-up, or a crash loop; the message is one line, ``code`` the exit code."""

    code = 3


class ServeRefused(ServeError):
    """A configuration ``serve`` refuses to start with (``refusal``, ``retention_refusal``); exit code 1."""

    code = 1


NO_OPERATOR_KEYS = ("operator_keys is empty: the hub would trust no manifest or policy and quarantine nothing for "
                    "firmware; set operator_keys (ATTEST_HUB_OPERATOR_KEYS) to the operators' public key files, or "
                    "allow_no_operator_keys = true to serve without them")


def refusal(settings: Settings) -> str | None:
    """Why ``serve`` must not start on these settings (a configuration error, exit 1), or None.

    Without operator keys no signed manifest or policy verifies, so every device would pass unappraised:
    refused unless ``allow_no_operator_keys`` opts in (docs/SECURITY.md, fail closed).
    """
    if not settings.operator_keys and not settings.allow_no_operator_keys:
        return NO_OPERATOR_KEYS
    return None


def retention_refusal(settings: Settings) -> str | None:
    """Why the archive folder cannot be used (``retention_dir``, default ``state_dir/archive``), or None: checked
    (created if missing, a file written and removed) when this host's leader prunes (``retention_days`` > 0) or
    ``retention_dir`` is set, so a folder the hub cannot create or write stops the start instead of every
    retention pass."""
    if not settings.retention_dir and not (settings.retention_days > 0 and settings.leader):
        return None
    try:
        check_archive(settings.archive_dir)
    except ArchiveError as exc:
        return (f"retention_dir: {exc}; the hub exports there what it prunes (retention_days, `attest-hub db "
                "prune`): set retention_dir (ATTEST_HUB_RETENTION_DIR) to a folder this user can create and write")
    return None


def preflight(settings: Settings, timeout_s: float = 5.0, *, lock: StateLock | None = None) -> None:
    """The start-up checks, the most basic first, each refused here once (not in each worker) in one line:

    1. the state directory exists, is usable and holds a hub (``state_dir_problem``);
    2. the database opens as the hub opens it (schema at head, no stale WAL, generation not behind the state
       directory's);
    3. the hub's keys and the operator keys load;
    4. the configuration is one the hub serves with (``refusal``, then ``retention_refusal``: ServeRefused,
       exit 1);
    5. ``lock`` (the state directory's, see :class:`StateLock`) is taken, so no other hub serves on it;
    6. the broker accepts TCP, and the database is not behind the epoch and generation this hub published
       (signed, retained) on it.

    Raises ServeError (exit 3) or ServeRefused (exit 1)."""
    problem = state_dir_problem(settings)
    if problem is not None:
        raise ServeError(problem)
    try:
        store = open_store(settings)
    except (HubKeyError, StoreError) as exc:
        raise ServeError(str(exc)) from exc
    try:
        try:
            keys = load_hub_keys(settings)
        except (HubKeyError, KeyFileError) as exc:
            raise ServeError(str(exc)) from exc
        problem = refusal(settings) or retention_refusal(settings)
        if problem is not None:
            raise ServeRefused(f"configuration: {problem}")
        if lock is not None:  # before the broker check: under mutual TLS it resumes worker 0's session
            try:
                lock.acquire()
            except StoreError as exc:
                raise ServeError(str(exc)) from exc
        address = (settings.broker_host, settings.broker_port)
        try:
            with socket.create_connection(address, timeout=timeout_s):
                pass
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ServeError(f"broker unreachable at {settings.broker_host}:{settings.broker_port}: {reason}") \
                from exc
        try:
            retained = announced(settings, keys.public_key)
            check_announced(store, retained.epoch, retained.generation)
        except BrokerUnreachable as exc:
            log.warning("the epoch and generation published on the broker were not checked: %s", exc)
        except StoreError as exc:
            raise ServeError(str(exc)) from exc
    finally:
        store.close()


def listening(settings: Settings, count: int) -> str:
    """One line: the broker, the database (credentials masked) and where metrics and health are served."""
    tls = "mutual TLS" if settings.broker_tls_ca else "plain MQTT"
    database = str(settings.masked()["database_url"])
    if settings.metrics_port:
        last = settings.metrics_port + count - 1
        ports = str(settings.metrics_port) if count == 1 else f"{settings.metrics_port}-{last}"
        http = (f"metrics and health on http://{settings.metrics_host}:{ports}/metrics, /healthz, /readyz "
                "(worker N on metrics_port + N)")
    else:
        http = "no metrics or health endpoint (metrics_port = 0)"
    return (f"serving with {count} worker(s): broker {settings.broker_host}:{settings.broker_port} ({tls}), "
            f"database {database}; {http}")


def serve_forever(settings: Settings, count: int, stop: threading.Event, verbosity: int = 1) -> None:
    """Pre-flight, one start-up line, then the workers until ``stop``; infrastructure faults as ServeError.
    The state directory's lock is held from the pre-flight until the workers have stopped; the SQLite database
    is stamped (hub/crypto/hubstate.py ``stamp_database``) before the workers start and after they stop."""
    lock = StateLock(settings, "serve")
    try:
        preflight(settings, lock=lock)
        try:
            wait_for_earlier_workers(settings)  # of a serve whose supervisor was killed (hub/server/presence.py)
        except StoreError as exc:
            raise ServeError(str(exc)) from exc
        try:
            stamp_database(settings)  # the database file and the WAL the workers write belong together
        except StoreError as exc:
            raise ServeError(str(exc)) from exc
        log.info(listening(settings, count))
        if not settings.operator_keys:
            log.warning("SERVING WITHOUT OPERATOR KEYS (allow_no_operator_keys = true): no manifest or policy is "
                        "trusted and nothing is quarantined for firmware; /healthz shows no_operator_keys")
        try:
            run_workers(settings, count, stop, verbosity)
        except _FAULTS as exc:
            raise ServeError(str(exc)) from exc
        try:
            stamp_database(settings)  # a clean stop: every write in the file, the WAL empty, a new mark
        except StoreError as exc:
            log.warning("%s", exc)
    finally:
        lock.release()
    log.info("stopped")
