"""``attest-hub db``: schema migrations (alembic), restore acceptance and retention (``db prune``).

Example:
  attest-hub --database-url postgresql://hub@db/hub db upgrade
  attest-hub --database-url postgresql://hub@db/hub db current
  attest-hub --state-dir var db accept-restore
"""

from __future__ import annotations

import time
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from hub.appraisal.report import parse_duration
from hub.appraisal.retention import ArchiveError, RetentionError, prune
from hub.cli.common import HubContext, emit, fail, json_option, pass_hub
from hub.crypto.hubkeys import HubKeyError, owner_only
from hub.crypto.hubstate import (
    RESTORE_DOC,
    NothingToAccept,
    StateLock,
    StateLocked,
    WalRecovered,
    accept_restore,
    adopt_generation,
    check_wal,
    missing_state_dir_message,
    open_store,
    record_recovery,
)
from hub.server.announced import Announced, BrokerUnreachable, announced
from hub.store import Store, StoreError
from hub.store.db import SchemaError
from hub.store.migrate import current_revision, head_revision, upgrade


@click.group()
def db() -> None:
    """Database schema (migrate, show the revision), restore acceptance, retention (export and prune old rows)."""


def _open(hub: HubContext) -> tuple[Store, WalRecovered | None]:
    """The database as it is (any schema revision), and the crash recovery its WAL needed, if any (recorded in
    the audit log by the command once it is done: ``record_recovery``)."""
    if not hub.settings.database_url and not hub.settings.state_dir.is_dir():
        fail(missing_state_dir_message(hub.settings), code=3)
    try:
        recovered = check_wal(hub.settings)  # SQLite would apply a stale WAL at the first read, keep it at the close
        return Store(hub.settings.effective_database_url, schema=False), recovered
    except StoreError as exc:
        fail(str(exc), code=3)


def _record(hub: HubContext, recovered: WalRecovered | None) -> None:
    try:
        record_recovery(hub.settings, recovered)
    except StoreError as exc:
        fail(str(exc), code=3)


@db.command("upgrade")
@json_option
@pass_hub
def db_upgrade(hub: HubContext) -> None:
    """Apply every pending migration (idempotent, also on a half-created schema; an advisory lock serialises
    upgrades started together). On an empty database it creates the schema; a hub whose state dir holds its
    keys then still refuses the database until ``db accept-restore``.

    Example: attest-hub --config /etc/attest-hub/hub.toml db upgrade
    """
    with owner_only():
        store, recovered = _open(hub)
        try:
            before = current_revision(store.engine)
            after = upgrade(store.engine)
            if hub.settings.audit_key_path.exists():
                adopt_generation(hub.settings, store)  # a database and state dir older than generations
        except (SQLAlchemyError, StoreError, OSError) as exc:
            fail(f"migration failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", code=3)
        finally:
            store.close()
    _record(hub, recovered)
    emit(hub, {"from": before, "to": after}, lambda d: click.echo(
        f"schema at revision {d['to']} (was {d['from']})" if d["from"] is not None
        else f"schema created at revision {d['to']} (the database was empty)"))


@db.command("current")
@json_option
@pass_hub
def db_current(hub: HubContext) -> None:
    """Print the schema revision of the database and the newest one this release knows.

    Example: attest-hub --state-dir var db current --json
    """
    store, recovered = _open(hub)
    try:
        current = current_revision(store.engine)
    except SQLAlchemyError as exc:
        fail(f"cannot read the schema revision: {str(exc).splitlines()[0]}", code=3)
    finally:
        store.close()
    _record(hub, recovered)
    data = {"current": current, "head": head_revision()}
    emit(hub, data, lambda d: click.echo(
        f"current {d['current']}, head {d['head']}" if d["current"] is not None
        else f"the database is empty (no schema), head {d['head']}: run `attest-hub db upgrade` or `attest-hub init`"))


@db.command("accept-restore")
@json_option
@pass_hub
def db_accept_restore(hub: HubContext) -> None:
    """Adopt a database restored from a backup (or rolled back), which the hub otherwise refuses.

    Run it with every worker stopped. It rotates the nonce secret (evidence captured before carries nonces
    that no longer verify), moves the epoch past every epoch issued, steps the generation past the one the
    state directory recorded, and records the event and the audit entries the restore lost in the audit log.
    Copy the new nonce-secret.bin to every machine that runs workers before starting them.

    \b
    Example: attest-hub --state-dir var db accept-restore
    """
    try:
        open_store(hub.settings, check_generation=False).close()  # a database it cannot use: that error first
    except SchemaError as exc:
        if exc.kind == "empty":
            fail(f"the database is empty: restore the backup into it, or with none run `attest-hub db upgrade` "
                 f"first (it creates an empty schema), then `attest-hub db accept-restore` ({RESTORE_DOC})", code=3)
        fail(str(exc), code=3)
    except (StoreError, HubKeyError) as exc:
        fail(str(exc), code=3)
    try:
        lock = StateLock(hub.settings, "db accept-restore").acquire()  # no hub serving on this state dir
    except StateLocked as exc:
        fail(str(exc), code=1)
    except StoreError as exc:
        fail(str(exc), code=3)
    try:
        retained = Announced()
        try:
            retained = announced(hub.settings, hub.keys().public_key)
        except BrokerUnreachable as exc:
            click.echo(f"warning: {exc}; the epoch and generation are moved past the state dir's record and the "
                       "database only", err=True)
        try:
            done = accept_restore(hub.settings, announced_epoch=retained.epoch,
                                  announced_generation=retained.generation)
        except NothingToAccept as exc:
            fail(str(exc), code=1)
        except (StoreError, HubKeyError, OSError) as exc:
            fail(str(exc), code=3)
    finally:
        lock.release()
    emit(hub, done.as_dict(), lambda d: click.echo(
        f"restore accepted: generation {d['database_generation']} -> {d['generation']} (state dir had "
        f"{d['recorded_generation']}), epoch {d['epoch_before']} -> {d['epoch']}, nonce secret rotated, "
        f"{d['lost_audit_entries']} audit entries lost with the restore (recorded in the audit log); "
        f"see {RESTORE_DOC}"))


@db.command("prune")
@click.option("--older-than", default=None, metavar="DURATION",
              help="Prune what is older than this (e.g. 90d); default: the retention_days setting.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the exported JSON Lines files; default: the retention_dir setting (state_dir/archive).")
@json_option
@pass_hub
def db_prune(hub: HubContext, older_than: str | None, out: Path | None) -> None:
    """Export verdicts, audit entries and rejection counts older than a cut-off, then delete them.

    The audit chain stays verifiable: the pruned prefix is summed up in a checkpoint signed with the hub
    key, from which `attest-hub audit verify` starts; each exported audit file verifies on its own with
    `attest-hub audit verify --file`. The leader worker does the same every retention_interval_s. An --out
    folder that cannot be created or written ends in one line and exit 1 (the configured retention_dir: 3).

    \b
    Example: attest-hub db prune --older-than 90d --out /srv/hub-archive
    """
    if older_than is not None:
        try:
            age = parse_duration(older_than)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from exc
    elif hub.settings.retention_days > 0:
        age = hub.settings.retention_days * 86400
    else:
        fail("no age given: pass --older-than or set retention_days")
    archive = out or hub.settings.archive_dir
    keys = hub.keys()
    store = hub.store()
    try:
        result = prune(store, keys, archive, time.time() - age)
    except ArchiveError as exc:  # a folder the operator named (--out) is their input; the configured one, the host's
        fail(str(exc), code=1 if out is not None else 3)
    except (StoreError, RetentionError) as exc:
        fail(str(exc), code=3)
    data = {"cutoff": result.cutoff, "verdicts": result.verdicts, "audit_entries": result.audit,
            "rejection_counts": result.rejection_counts, "files": result.files, "archive": str(archive),
            "checkpoint": None if result.checkpoint is None else
            {"through": result.checkpoint.through, "hash": result.checkpoint.hash,
             "entries": result.checkpoint.entries}}
    emit(hub, data, lambda d: click.echo(
        f"pruned {d['verdicts']} verdicts, {d['audit_entries']} audit entries and {d['rejection_counts']} "
        f"rejection counts into {d['archive']} ({len(d['files'])} files)"))
