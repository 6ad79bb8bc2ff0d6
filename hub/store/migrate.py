"""Schema migrations (alembic), driven from code: ``attest-hub init`` and ``attest-hub db upgrade``.

Opening a store never changes the schema (``check_schema`` only reads): a
database behind this release is refused with "run `attest-hub db upgrade`",
an empty one is not a hub, a foreign one is refused. The schema is made only
by :func:`upgrade`, which ``attest-hub init`` runs on a new database and
``attest-hub db upgrade`` on an existing one, under a transaction-scoped
advisory lock on PostgreSQL so that two upgrades started together migrate
once. Each migration's steps are idempotent (``create_table_once``,
``add_column_once``, ``create_index_once``): a schema that an older release
half-created is completed, not refused.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command, op
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlmodel import SQLModel

import hub.store.models  # noqa: F401  (the tables, for comparing a database made without migrations)
from hub.store.db import SchemaError

ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"
# Any constant works; it only has to be the same in every worker.
_MIGRATION_LOCK = 0x4174_7465_7374  # "Attest"
BASELINE = "0001"  # the schema that ``create_all`` made before migrations existed
_HUB_TABLES = frozenset({"device", "verdict", "audit", "hub_state"})


def _config(conn: Connection | None = None) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(ALEMBIC_INI.parent / "migrations"))
    if conn is not None:
        config.attributes["connection"] = conn
    return config


@cache
def revisions() -> tuple[str, ...]:
    """Every revision this release knows, oldest first (the last is head)."""
    script = ScriptDirectory.from_config(_config())
    return tuple(reversed([rev.revision for rev in script.walk_revisions()]))


def head_revision() -> str:
    return revisions()[-1]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema_state(conn: Connection) -> tuple[str, str | None]:
    """(state, revision): state is ``empty`` (no tables), ``foreign`` (tables, none of them the hub's),
    ``unversioned`` (the hub's tables without a recorded revision: made before migrations), ``behind``,
    ``head`` or ``ahead`` (a revision this release does not know)."""
    tables = set(inspect(conn).get_table_names())
    if not tables:
        return "empty", None
    if "alembic_version" not in tables:
        return ("unversioned" if tables >= _HUB_TABLES else "foreign"), None
    current = MigrationContext.configure(conn).get_current_revision()
    if current is None:
        return ("unversioned" if tables >= _HUB_TABLES else "foreign"), None
    if current == head_revision():
        return "head", current
    return ("behind" if current in revisions() else "ahead"), current


def check_schema(engine: Engine, where: str) -> None:
    """Raise ``SchemaError`` unless the database is a hub database at this release's head; reads only."""
    with engine.connect() as conn:
        conn.info["reading"] = True  # Store.reading's deferred BEGIN on SQLite: no write lock
        try:
            state, current = schema_state(conn)
        finally:
            conn.info.pop("reading", None)  # the pooled connection writes again later
    head = head_revision()
    if state == "head":
        return
    messages = {
        "empty": f"database {where} is empty: it holds no hub (a new hub's database is made by `attest-hub init`)",
        "foreign": f"database {where} is not an attest-hub database (it has tables, but not the hub's)",
        "unversioned": f"database {where} has no schema revision (made by an earlier release): "
                       "run `attest-hub db upgrade`",
        "behind": f"database {where} is at schema revision {current}, this release needs {head}: "
                  "run `attest-hub db upgrade`",
        "ahead": f"database {where} is at schema revision {current}, which this release does not know "
                 f"(its newest is {head}): run the release that made it",
    }
    raise SchemaError(state, messages[state])


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the schema to ``revision`` (an empty database: create it); returns the revision now current.

    Raises ``SchemaError`` for a foreign database or one at a revision this release does not know."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        state, current = schema_state(conn)
        if state == "foreign":
            raise SchemaError(state, "the database is not an attest-hub database (it has tables, but not the hub's)")
        if state == "ahead":
            raise SchemaError(state, f"the database is at schema revision {current}, unknown to this release")
        if state == "unversioned":
            # A database created from the models (``create_all``): if it matches them it is at head,
            # otherwise it was made by a release before migrations existed, i.e. the baseline. The
            # migrations' steps are idempotent, so a baseline that already has later tables is completed.
            differs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
            current = BASELINE if differs else head_revision()
            command.stamp(_config(conn), current)
        if current != head_revision() or revision != "head":
            command.upgrade(_config(conn), revision)
    return current_revision(engine)


def downgrade(engine: Engine, revision: str) -> str | None:
    with engine.begin() as conn:
        command.downgrade(_config(conn), revision)
    return current_revision(engine)


# --- idempotent steps for the migration scripts (run inside alembic's op context) ---------------------


def _inspector() -> Any:
    return inspect(op.get_bind())


def create_table_once(name: str, *columns: Any) -> bool:
    """``op.create_table`` unless the table exists; True if it was created."""
    if _inspector().has_table(name):
        return False
    op.create_table(name, *columns)
    return True


def create_index_once(name: str, table: str, columns: list[str], unique: bool = False) -> None:
    if name not in {index["name"] for index in _inspector().get_indexes(table)}:
        op.create_index(name, table, columns, unique=unique)


def add_column_once(table: str, column: sa.Column[Any]) -> None:
    if column.name not in {c["name"] for c in _inspector().get_columns(table)}:
        with op.batch_alter_table(table) as batch:
            batch.add_column(column)
