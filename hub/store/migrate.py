"""Schema migrations (alembic), driven from code: ``attest-hub db upgrade``.

PostgreSQL, the store for several workers and several machines, is always
migrated: ``Store`` runs :func:`upgrade` when it opens a PostgreSQL database,
under a transaction-scoped advisory lock so that workers starting together
migrate once. SQLite (one machine, the embedded default) may still be created
from the models directly; :func:`upgrade` works on it too.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlmodel import SQLModel

import hub.store.models  # noqa: F401  (the tables, for comparing a database made without migrations)

ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"
# Any constant works; it only has to be the same in every worker.
_MIGRATION_LOCK = 0x4174_7465_7374  # "Attest"
BASELINE = "0001"  # the schema that ``create_all`` made before migrations existed


def _config(conn: Connection | None = None) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(ALEMBIC_INI.parent / "migrations"))
    if conn is not None:
        config.attributes["connection"] = conn
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the schema to ``revision``; returns the revision now current."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        current = MigrationContext.configure(conn).get_current_revision()
        if current is None and inspect(conn).has_table("device"):
            # A database created from the models (``create_all``): if it matches them it is at head,
            # otherwise it was made by a release before migrations existed, i.e. the baseline.
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
