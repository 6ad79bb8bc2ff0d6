"""``attest-hub db``: schema migrations (alembic) for the hub's database.

Example:
  attest-hub --database-url postgresql://hub@db/hub db upgrade
  attest-hub --database-url postgresql://hub@db/hub db current
"""

from __future__ import annotations

import click
from sqlalchemy.exc import SQLAlchemyError

from hub.cli.common import HubContext, emit, fail, json_option, pass_hub
from hub.store import Store, StoreError
from hub.store.migrate import current_revision, head_revision, upgrade


@click.group()
def db() -> None:
    """Database schema: migrate to the current release, show the revision."""


def _open(hub: HubContext) -> Store:
    try:
        return Store(hub.settings.effective_database_url, create=False)
    except StoreError as exc:
        fail(str(exc), code=3)


@db.command("upgrade")
@json_option
@pass_hub
def db_upgrade(hub: HubContext) -> None:
    """Apply every pending migration (idempotent; safe while workers start: an advisory lock serialises it).

    Example: attest-hub --config /etc/attest-hub/hub.toml db upgrade
    """
    store = _open(hub)
    try:
        before = current_revision(store.engine)
        after = upgrade(store.engine)
    except SQLAlchemyError as exc:
        fail(f"migration failed: {exc}", code=3)
    finally:
        store.close()
    emit(hub, {"from": before, "to": after}, lambda d: click.echo(f"schema at revision {d['to']} (was {d['from']})"))


@db.command("current")
@json_option
@pass_hub
def db_current(hub: HubContext) -> None:
    """Print the schema revision of the database and the newest one this release knows.

    Example: attest-hub --state-dir var db current --json
    """
    store = _open(hub)
    try:
        current = current_revision(store.engine)
    except SQLAlchemyError as exc:
        fail(f"cannot read the schema revision: {exc}", code=3)
    finally:
        store.close()
    data = {"current": current, "head": head_revision()}
    emit(hub, data, lambda d: click.echo(f"current {d['current']}, head {d['head']}"))
