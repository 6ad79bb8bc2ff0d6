"""The evidence hot path's SQL: fixed statement texts run through the DB-API cursor of the caller's connection.

SQLAlchemy builds, caches and post-processes a statement on every execute (about 1 ms per batch for the
dozen statements a batch runs); the hot path's statements never change shape, so they are written once
here, per dialect, and run on the driver's cursor inside the caller's SQLAlchemy transaction (same
connection, same transaction: the write lock and the commit stay SQLAlchemy's). The SQLModel tables remain
the schema; these texts name their columns and are checked against them by the store's tests.

* a batch's reads are one query per table: the ids go in as one parameter (a JSON array read with
  ``json_each`` on SQLite, an array with ``= ANY`` on PostgreSQL), so the text is the same for every batch;
* a batch's writes are one ``executemany`` per table (``psycopg2.extras.execute_batch`` on PostgreSQL,
  which sends the rows in pages instead of one round trip each);
* driver errors become ``StoreError`` (passed in by the store), like SQLAlchemy's in ``Store``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection

_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")
PAGE_SIZE = 1000  # PostgreSQL: rows per round trip of an executemany


class HotSql:
    """The statements of one dialect (``sqlite`` or ``postgresql``), built once per store."""

    def __init__(self, dialect: str, device_fields: Sequence[str], error: type[Exception]) -> None:
        self.error = error  # what a driver error is raised as (the store's StoreError)
        self.postgres = dialect == "postgresql"
        self.device_fields = tuple(_ident(name) for name in device_fields)
        ids = "= ANY(?)" if self.postgres else "IN (SELECT value FROM json_each(?))"
        columns = ", ".join(self.device_fields)
        self.devices = self._text(f"SELECT {columns} FROM device WHERE device_id {ids}")  # noqa: S608 (identifiers are code constants, checked by _ident)
        # Rows are locked in id order: every worker locks in the same order, so none deadlocks another.
        self.devices_locked = self._text(
            f"SELECT {columns} FROM device WHERE device_id {ids} ORDER BY device_id FOR UPDATE"  # noqa: S608 (identifiers are code constants, checked by _ident)
            if self.postgres else f"SELECT {columns} FROM device WHERE device_id {ids}")  # noqa: S608 (identifiers are code constants, checked by _ident)
        self.existing = self._text(
            f"SELECT device_id, scheme, dedup_key FROM verdict WHERE device_id {ids} AND dedup_key {ids}")  # noqa: S608 (identifiers are code constants, checked by _ident)
        self.state = self._text("SELECT value FROM hub_state WHERE key = ?")
        self.state_for_update = self._text(
            "SELECT value FROM hub_state WHERE key = ?" + (" FOR UPDATE" if self.postgres else ""))  # noqa: S608 (identifiers are code constants, checked by _ident)
        self.set_state = self._text(
            "INSERT INTO hub_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        self.insert_state = self._text("INSERT INTO hub_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
        self._inserts: dict[tuple[str, tuple[str, ...]], str] = {}
        self.use_nonce = self._text(
            "INSERT INTO used_nonce (nonce, device_id, used_at) VALUES (?, ?, ?) ON CONFLICT (nonce) DO NOTHING")
        self.verdict_for = self._text(
            "SELECT device_id, scheme, dedup_key, authenticated, tier, status, trust_vector, problems, action, "
            "manifest_ref, policy_ref, received_at FROM verdict WHERE device_id = ? AND scheme = ? AND dedup_key = ?")
        self.latest_state_command = self._text(
            "SELECT device_id, seq, kind, signed FROM command WHERE device_id = ? "
            "AND kind IN ('quarantine', 'release', 'remediate') ORDER BY seq DESC LIMIT 1")
        self._updates: dict[tuple[str, ...], str] = {}
        # An audit append's one read: new ids (PostgreSQL: from the id sequence, one row per id; SQLite: the
        # highest id, under the write lock) and the chain's last seq (the unique (chain, seq) index).
        self.audit_next = (
            "SELECT nextval(%s::regclass), (SELECT COALESCE(MAX(seq), 0) FROM audit WHERE chain = %s) "
            "FROM generate_series(1, %s)" if self.postgres else
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM audit), "
            "(SELECT COALESCE(MAX(seq), 0) FROM audit WHERE chain = ?)")

    def _text(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def _insert(self, table: str, columns: Sequence[str], tail: str) -> str:
        marks = ", ".join("?" for _ in map(_ident, columns))
        return self._text(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}){tail}")  # noqa: S608 (identifiers are code constants, checked by _ident)

    def insert(self, table: str, columns: tuple[str, ...]) -> str:
        """``INSERT INTO table (columns) VALUES (...)``, for the columns the caller's rows carry (so a column
        added to a table and to its rows needs no change here); verdicts ignore a second copy of one evidence
        (the unique evidence key). Kept per (table, columns): a table's rows have one shape."""
        key = (table, columns)
        text = self._inserts.get(key)
        if text is None:
            tail = " ON CONFLICT (device_id, scheme, dedup_key) DO NOTHING" if table == "verdict" else ""
            text = self._inserts[key] = self._insert(_ident(table), columns, tail)
        return text

    def insert_rows(self, conn: Connection, table: str, rows: Sequence[Mapping[str, object]]) -> int:
        """One executemany of ``rows`` (dicts of one shape, column -> value) into ``table``."""
        if not rows:
            return 0
        columns = tuple(rows[0])
        pick = itemgetter(*columns)
        values = [pick(r) if len(columns) > 1 else (pick(r),) for r in rows]
        return self.executemany(conn, self.insert(table, columns), values)

    def update_devices(self, names: tuple[str, ...]) -> str:
        """``UPDATE device SET <names> WHERE device_id = ?`` (few distinct column sets: kept)."""
        text = self._updates.get(names)
        if text is None:
            if len(self._updates) > 256:
                self._updates.clear()
            sets = ", ".join(f"{_ident(n)} = ?" for n in names)
            text = self._updates[names] = self._text(f"UPDATE device SET {sets} WHERE device_id = ?")  # noqa: S608 (identifiers are code constants, checked by _ident)
        return text

    def ids(self, values: Sequence[str]) -> object:
        """The one parameter that carries a set of ids."""
        return list(values) if self.postgres else json.dumps(list(values))


    @contextmanager
    def cursor(self, conn: Connection) -> Iterator[Any]:
        """The driver cursor of ``conn`` (inside its transaction, if one is open); driver errors -> ``error``."""
        raw = conn.connection.driver_connection
        assert raw is not None
        cur = raw.cursor()
        try:
            yield cur
        except conn.dialect.loaded_dbapi.Error as exc:
            raise self.error(_first_line(exc)) from exc
        finally:
            cur.close()

    def executemany(self, conn: Connection, sql: str, rows: Sequence[Sequence[object]]) -> int:
        """Run one statement for every row; returns the rows affected (-1 when the driver cannot tell)."""
        if not rows:
            return 0
        with self.cursor(conn) as cur:
            if self.postgres:
                from psycopg2.extras import execute_batch  # type: ignore[import-untyped]

                execute_batch(cur, sql, rows, page_size=PAGE_SIZE)
            else:
                cur.executemany(sql, rows)
            return int(cur.rowcount)

    def query(self, conn: Connection, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        with self.cursor(conn) as cur:
            cur.execute(sql, tuple(params))
            return list(cur.fetchall())

    def execute(self, conn: Connection, sql: str, params: Sequence[object]) -> int:
        with self.cursor(conn) as cur:
            cur.execute(sql, tuple(params))
            return int(cur.rowcount)


def as_bytes(value: object) -> bytes | None:
    """A binary column as ``bytes`` (psycopg2 returns memoryview)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"binary column holds {type(value).__name__}")


def _ident(name: str) -> str:
    """A column or table name of this code, never data: lower-case letters, digits and underscores."""
    if not _IDENT.fullmatch(name):
        raise ValueError(f"not an SQL identifier of the schema: {name!r}")
    return name


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__
