"""``attest-hub db``: schema migrations (alembic) and restore acceptance for the hub's database.

Example:
  attest-hub --database-url postgresql://hub@db/hub db upgrade
  attest-hub --database-url postgresql://hub@db/hub db current
  attest-hub --state-dir var db accept-restore
"""

from __future__ import annotations

import click
from sqlalchemy.exc import SQLAlchemyError

from hub.cli.common import HubContext, emit, fail, json_option, pass_hub
from hub.crypto.hubkeys import HubKeyError, owner_only
from hub.crypto.hubstate import RESTORE_DOC, accept_restore, adopt_generation, open_store
from hub.server.announced import BrokerUnreachable, announced_epoch
from hub.store import Store, StoreError
from hub.store.migrate import current_revision, head_revision, upgrade


@click.group()
def db() -> None:
    """Database schema: migrate to the current release, show the revision; accept a restored database."""


def _open(hub: HubContext) -> Store:
    try:
        return Store(hub.settings.effective_database_url, schema=False)
    except StoreError as exc:
        fail(str(exc), code=3)


@db.command("upgrade")
@json_option
@pass_hub
def db_upgrade(hub: HubContext) -> None:
    """Apply every pending migration (idempotent, also on a half-created schema; an advisory lock serialises
    upgrades started together). On an empty database it creates the schema; a hub whose state dir holds its
    keys then still refuses the database until ``db accept-restore``."""
    with owner_only():
        store = _open(hub)
        try:
            before = current_revision(store.engine)
            after = upgrade(store.engine)
            if hub.settings.audit_key_path.exists():
                adopt_generation(hub.settings, store)  # a database and state dir older than generations
        except (SQLAlchemyError, StoreError, OSError) as exc:
            fail(f"migration failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", code=3)
        finally:
            store.close()
    emit(hub, {"from": before, "to": after}, lambda d: click.echo(f"schema at revision {d['to']} (was {d['from']})"))


@db.command("current")
@json_option
@pass_hub
def db_current(hub: HubContext) -> None:
    """Print the schema revision of the database and the newest one this release knows."""
    store = _open(hub)
    try:
        current = current_revision(store.engine)
    except SQLAlchemyError as exc:
        fail(f"cannot read the schema revision: {str(exc).splitlines()[0]}", code=3)
    finally:
        store.close()
    data = {"current": current, "head": head_revision()}
    emit(hub, data, lambda d: click.echo(f"current {d['current']}, head {d['head']}"))


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
    except (StoreError, HubKeyError) as exc:
        fail(str(exc), code=3)
    announced = None
    try:
        announced = announced_epoch(hub.settings, hub.keys().public_key)
    except BrokerUnreachable as exc:
        click.echo(f"warning: {exc}; the epoch is moved past the state dir's record and the database only", err=True)
    try:
        done = accept_restore(hub.settings, announced_epoch=announced)
    except (StoreError, HubKeyError, OSError) as exc:
        fail(str(exc), code=3)
    emit(hub, done.as_dict(), lambda d: click.echo(
        f"restore accepted: generation {d['database_generation']} -> {d['generation']} (state dir had "
        f"{d['recorded_generation']}), epoch {d['epoch_before']} -> {d['epoch']}, nonce secret rotated, "
        f"{d['lost_audit_entries']} audit entries lost with the restore (recorded in the audit log); "
        f"see {RESTORE_DOC}"))
