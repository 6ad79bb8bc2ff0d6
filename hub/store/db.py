"""The store: one SQLAlchemy engine for SQLite (embedded default) or PostgreSQL.

The evidence hot path (device reads and writes, verdicts, commands, audit
rows, hub state, nonces) runs fixed SQL on the DB-API cursor of the caller's
SQLAlchemy transaction (``hub/store/hotsql.py``): one query per table for a
batch's reads, one executemany per table for its writes, no statement
building per batch. The operator views use SQLAlchemy Core on the SQLModel
tables. Every write the pipeline makes for one batch of
evidence happens in one transaction, and the MQTT messages of that batch are
acknowledged only after it commits. Infrastructure faults are translated to
``StoreError`` here, at the one boundary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import cached_property
from operator import attrgetter
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from hub.store.hotsql import HotSql, as_bytes
from hub.store.models import (
    AuditEntry,
    CommandRecord,
    Device,
    DeviceResult,
    HubState,
    ManifestRecord,
    PolicyRecord,
    UsedNonce,
    Verdict,
)

DEVICES = Device.__table__  # type: ignore[attr-defined]
VERDICTS = Verdict.__table__  # type: ignore[attr-defined]
MANIFESTS = ManifestRecord.__table__  # type: ignore[attr-defined]
POLICIES = PolicyRecord.__table__  # type: ignore[attr-defined]
COMMANDS = CommandRecord.__table__  # type: ignore[attr-defined]
STATE = HubState.__table__  # type: ignore[attr-defined]
NONCES = UsedNonce.__table__  # type: ignore[attr-defined]
AUDIT = AuditEntry.__table__  # type: ignore[attr-defined]
RESULTS = DeviceResult.__table__  # type: ignore[attr-defined]


class StoreError(RuntimeError):
    """The database could not be reached or could not commit (locked, full, down)."""


@dataclass(slots=True)
class DeviceRecord:
    """A device row, mutable while one batch is being decided."""

    device_id: str
    device_class: str
    public_key_pem: str | None = None
    key_version: int = 1
    ueid: bytes | None = None
    certificate_pem: str | None = None
    status: str = "enrolled"
    tier: int = 0
    trust_vector: str = "{}"
    firmware_version: str | None = None
    last_problems: str = "[]"
    bootcount: int = -1
    seq: int = -1
    svn_high_water: int = 0
    reboots: int = 0
    last_seen: float | None = None
    last_verdict_at: float | None = None
    enrolled_at: float = 0.0
    revoked: bool = False
    quarantine_hold: bool = False
    command_seq: int = 0
    next_deadline: float | None = None
    chain_bootcount: int | None = None
    chain_seq: int | None = None
    chain_head: bytes | None = None
    anomaly_hold: bool = False
    seq_window: bytes | None = None
    """The anti-replay window beside the mark ``(bootcount, seq)``: which of the sequence numbers below it were
    judged (hub/appraisal/antireplay.py); None: all of them."""

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def snapshot(self) -> tuple[object, ...]:
        """The field values in order, to find later what a batch changed (``Store.save_devices``)."""
        return tuple(_SNAPSHOT(self))


_DEVICE_FIELDS = tuple(f.name for f in fields(DeviceRecord))
_SNAPSHOT = attrgetter(*_DEVICE_FIELDS)


class SchemaError(StoreError):
    """The database is not a hub database at this release's schema (``kind``: empty, foreign, behind, ahead)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _device_row(row: Sequence[Any]) -> DeviceRecord:
    """A device record from a raw driver row in field order, typed as SQLAlchemy would type it (SQLite
    returns booleans as 0/1, psycopg2 binary columns as memoryview)."""
    record = DeviceRecord(*row)
    record.revoked, record.quarantine_hold = bool(record.revoked), bool(record.quarantine_hold)
    record.anomaly_hold = bool(record.anomaly_hold)
    record.ueid, record.chain_head = as_bytes(record.ueid), as_bytes(record.chain_head)
    record.seq_window = as_bytes(record.seq_window)
    return record


class Store:
    """The hub's database. Opening it never changes its schema: ``schema=True`` (the default) checks that it
    is a hub database at this release's revision and raises ``SchemaError`` if not (the schema is created
    only by ``attest-hub init`` and ``attest-hub db upgrade``, hub/store/migrate.py)."""

    def __init__(self, url: str, *, max_pages: int = 0, schema: bool = True) -> None:
        self.url = url
        self.max_pages = max_pages  # SQLite: PRAGMA max_page_count set at every write transaction; 0: none
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        # Key of the audit chain's seal (hub/audit.py), from the state dir: set by hub.crypto.hubstate.open_store.
        self.audit_key: bytes | None = None
        self._audit_seq: str | None = None  # PostgreSQL: the audit id sequence's name, looked up once
        self._save_results: Any = None
        try:
            self.engine = _make_engine(url, self.dialect, self)
            if schema:
                from hub.store.migrate import check_schema

                check_schema(self.engine, self.where)
        except SchemaError:
            self.engine.dispose()
            raise
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open database {self.where}: {_short(exc)}") from exc
        except ImportError as exc:  # the URL's driver is not installed (e.g. PostgreSQL without the extra)
            extra = " (install the extra: pip install 'fleet-attestation-hub[postgres]')" if \
                self.dialect == "postgresql" else ""
            raise StoreError(f"cannot open database {self.where}: no driver {exc.name!r}{extra}") from exc

    @property
    def where(self) -> str:
        """The database named for messages (no credentials)."""
        return self.url.split("@")[-1]

    def close(self) -> None:
        self.engine.dispose()

    @cached_property
    def hot(self) -> HotSql:
        """The hot path's fixed SQL for this dialect (hub/store/hotsql.py)."""
        return HotSql(self.dialect, _DEVICE_FIELDS, StoreError)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction; SQLite takes the write lock at BEGIN (IMMEDIATE)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except DBAPIError as exc:
            raise StoreError(_short(exc)) from exc
        except SQLAlchemyError as exc:
            raise StoreError(_short(exc)) from exc

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read-only connection (rolled back at the end). On SQLite it begins a deferred transaction, so a
        reader (the HTTP API, the CLI's views) never waits for, or blocks, the hub's writer (WAL)."""
        try:
            with self.engine.connect() as conn:
                conn.info["reading"] = True
                try:
                    yield conn
                finally:
                    conn.info.pop("reading", None)
        except SQLAlchemyError as exc:
            raise StoreError(_short(exc)) from exc

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read-only connection whose statements all see one snapshot of the database.

        On PostgreSQL audit ids come from a sequence, so two workers can commit them out of id order: a
        reader paging by id in separate statements could pass an id that commits later. REPEATABLE READ
        fixes what every statement sees at the first one (each chain is then a complete prefix, since a
        chain's entries commit in order under its head's lock). SQLite has one writer, which assigns ids in
        commit order under its lock, so its ordinary read transaction is already a snapshot."""
        try:
            with self.engine.connect() as conn:
                if self.dialect == "postgresql":
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                conn.info["reading"] = True
                try:
                    with conn.begin():
                        yield conn
                finally:
                    conn.info.pop("reading", None)
        except SQLAlchemyError as exc:
            raise StoreError(_short(exc)) from exc

    def ping(self) -> None:
        with self.reading() as conn:
            conn.execute(select(1))

    # --- devices ---------------------------------------------------------------

    def devices(self, conn: Connection, ids: Iterable[str], *, lock: bool = False) -> dict[str, DeviceRecord]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        sql = self.hot.devices_locked if lock else self.hot.devices  # PostgreSQL: FOR UPDATE, in id order
        # Columns are selected in field order, so a row constructs its record positionally.
        rows = self.hot.query(conn, sql, (self.hot.ids(wanted),))
        return {row[0]: _device_row(row) for row in rows}

    def save_devices(self, conn: Connection, records: Sequence[DeviceRecord],
                     before: Mapping[str, tuple[object, ...]] | None = None) -> None:
        """Write device rows (locked by the caller) with one executemany. With ``before``
        (``DeviceRecord.snapshot`` of each as read), only the columns that changed in some row of the batch
        are written (a row whose value did not change gets the value it has, read under the same lock)."""
        if not records:
            return
        changed: set[str] = set()
        written: list[DeviceRecord] = []
        for record in records:
            old = before.get(record.device_id) if before is not None else None
            if old is None:
                changed.update(_DEVICE_FIELDS[1:])
                written.append(record)
                continue
            differ = [n for n, was, now in zip(_DEVICE_FIELDS, old, record.snapshot(), strict=True)
                      if was != now or type(was) is not type(now)]
            if differ:
                changed.update(differ)
                written.append(record)
        if not written:
            return
        names = tuple(n for n in _DEVICE_FIELDS[1:] if n in changed)
        pick = attrgetter(*names, "device_id")
        rows = [pick(r) for r in written]
        self.hot.executemany(conn, self.hot.update_devices(names), rows)

    def insert_device(self, conn: Connection, record: DeviceRecord) -> None:
        conn.execute(DEVICES.insert(), [record.values()])

    def device_ids_with_status(self, conn: Connection, status: str) -> list[str]:
        """Ids of the devices in ``status`` (indexed: cheap at a million devices)."""
        query = select(DEVICES.c.device_id).where(DEVICES.c.status == status).order_by(DEVICES.c.device_id)
        return [str(r.device_id) for r in conn.execute(query)]

    def list_devices(self, conn: Connection) -> list[DeviceRecord]:
        rows = conn.execute(select(*[DEVICES.c[n] for n in _DEVICE_FIELDS]).order_by(DEVICES.c.device_id))
        return [DeviceRecord(*row) for row in rows]

    # --- verdicts --------------------------------------------------------------

    def existing_evidence(self, conn: Connection, keys: Iterable[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
        wanted = set(keys)
        if not wanted:
            return set()
        params = (self.hot.ids(sorted({k[0] for k in wanted})), self.hot.ids(sorted({k[2] for k in wanted})))
        return {(r[0], r[1], r[2]) for r in self.hot.query(conn, self.hot.existing, params)} & wanted

    def insert_verdicts(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self.hot.insert_rows(conn, "verdict", rows)

    def verdict_for(self, conn: Connection, device_id: str, scheme: str, dedup_key: str) -> dict[str, Any] | None:
        """The stored verdict of one evidence: its appraisal columns and receive time (not its bytes), or None."""
        rows = self.hot.query(conn, self.hot.verdict_for, (device_id, scheme, dedup_key))
        if not rows:
            return None
        names = ("device_id", "scheme", "dedup_key", "authenticated", "tier", "status", "trust_vector", "problems",
                 "action", "manifest_ref", "policy_ref", "received_at")
        found = dict(zip(names, rows[0], strict=True))
        found["authenticated"] = bool(found["authenticated"])
        return found

    def standing_verdict(self, conn: Connection, device_id: str, schemes: Iterable[str]) -> dict[str, Any] | None:
        """The device's newest verdict of one of ``schemes`` that was not a rejection nor late (action ``late``:
        judged after newer evidence, hub/appraisal/antireplay.py): the one whose result stands retained on
        ``fleet/{id}/result`` when ``schemes`` are the platform schemes."""
        row = conn.execute(
            select(VERDICTS)
            .where(VERDICTS.c.device_id == device_id, VERDICTS.c.scheme.in_(list(schemes)),
                   VERDICTS.c.status != "rejected", VERDICTS.c.action != "late")
            .order_by(VERDICTS.c.id.desc())
            .limit(1)
        ).first()
        return dict(row._mapping) if row else None

    def verdict_history(self, conn: Connection, device_id: str, limit: int = 20) -> list[dict[str, Any]]:
        rows = conn.execute(
            select(VERDICTS).where(VERDICTS.c.device_id == device_id).order_by(VERDICTS.c.id.desc()).limit(limit)
        )
        return [dict(r._mapping) for r in rows]

    def count_verdicts(self, conn: Connection) -> int:
        return int(conn.execute(select(func.count()).select_from(VERDICTS)).scalar_one())

    # --- commands --------------------------------------------------------------

    def insert_commands(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self.hot.insert_rows(conn, "command", rows)

    def latest_state_command(self, conn: Connection, device_id: str) -> dict[str, Any] | None:
        """The device's latest quarantine, release or remediate command: device_id, seq, kind, signed."""
        rows = self.hot.query(conn, self.hot.latest_state_command, (device_id,))
        if not rows:
            return None
        device, seq, kind, signed = rows[0]
        return {"device_id": device, "seq": seq, "kind": kind, "signed": bytes(signed)}

    def save_results(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Each device's latest retained signed result (device_id, scheme, issued_at, signed), replaced."""
        if not rows:
            return
        if self._save_results is None:  # built once: building it is most of a one-evidence batch's write
            dialect = postgresql if self.dialect == "postgresql" else sqlite
            stmt = dialect.insert(RESULTS)
            self._save_results = stmt.on_conflict_do_update(index_elements=["device_id"], set_={
                "scheme": stmt.excluded.scheme, "issued_at": stmt.excluded.issued_at, "signed": stmt.excluded.signed})
        conn.execute(self._save_results, list(rows))

    # --- hub state, nonces -----------------------------------------------------

    def get_state(self, conn: Connection, key: str) -> str | None:
        rows = self.hot.query(conn, self.hot.state, (key,))
        return None if not rows else str(rows[0][0])

    def set_state(self, conn: Connection, key: str, value: str) -> None:
        self.hot.execute(conn, self.hot.set_state, (key, value))

    def use_nonce(self, conn: Connection, nonce: bytes, device_id: str, at: float) -> bool:
        """Record a challenge nonce as used; False if it already was (exactly one use wins)."""
        return self.hot.execute(conn, self.hot.use_nonce, (nonce, device_id, at)) == 1

    # --- manifests and policies ------------------------------------------------

    def save_manifest(self, conn: Connection, device_class: str, sequence: int, signer: str, signed: bytes) -> bool:
        current = conn.execute(
            select(func.max(MANIFESTS.c.sequence)).where(MANIFESTS.c.device_class == device_class)
        ).scalar()
        if current is not None and sequence <= int(current):
            return False
        conn.execute(
            MANIFESTS.insert(),
            [{"device_class": device_class, "sequence": sequence, "signer": signer, "signed": signed,
              "received_at": time.time()}],
        )
        return True

    def latest_manifests(self, conn: Connection) -> dict[str, bytes]:
        latest = (
            select(MANIFESTS.c.device_class, func.max(MANIFESTS.c.sequence).label("seq"))
            .group_by(MANIFESTS.c.device_class)
            .subquery()
        )
        rows = conn.execute(
            select(MANIFESTS.c.device_class, MANIFESTS.c.signed).join(
                latest, (MANIFESTS.c.device_class == latest.c.device_class) & (MANIFESTS.c.sequence == latest.c.seq)
            )
        )
        return {r.device_class: bytes(r.signed) for r in rows}

    def manifest_history(self, conn: Connection, device_class: str | None = None) -> list[dict[str, Any]]:
        query = select(MANIFESTS).order_by(MANIFESTS.c.device_class, MANIFESTS.c.sequence)
        if device_class:
            query = query.where(MANIFESTS.c.device_class == device_class)
        return [dict(r._mapping) for r in conn.execute(query)]

    def save_policy(self, conn: Connection, device_class: str, version: int, source: str) -> bool:
        current = conn.execute(
            select(func.max(POLICIES.c.version)).where(POLICIES.c.device_class == device_class)
        ).scalar()
        if current is not None and version <= int(current):
            return False
        conn.execute(
            POLICIES.insert(),
            [{"device_class": device_class, "version": version, "source": source, "received_at": time.time()}],
        )
        return True

    def latest_policies(self, conn: Connection) -> dict[str, str]:
        rows = conn.execute(select(POLICIES.c.device_class, POLICIES.c.version, POLICIES.c.source))
        best: dict[str, tuple[int, str]] = {}
        for r in rows:
            if r.device_class not in best or r.version > best[r.device_class][0]:
                best[r.device_class] = (int(r.version), str(r.source))
        return {k: v[1] for k, v in best.items()}

    # --- audit -----------------------------------------------------------------

    def audit_rows(
        self, conn: Connection, since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        query = select(AUDIT).order_by(AUDIT.c.id)
        if since is not None:
            query = query.where(AUDIT.c.at >= since)
        if until is not None:
            query = query.where(AUDIT.c.at < until)
        return [dict(r._mapping) for r in conn.execute(query)]

    def insert_audit(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self.hot.insert_rows(conn, "audit", rows)

    def lock_audit_head(self, conn: Connection, chain: str = "") -> str:
        """A chain's last entry hash (GENESIS for none), locked for this transaction: a PostgreSQL row lock on
        that chain's head only (other chains' writers do not wait); SQLite holds the write lock anyway."""
        return self.lock_audit_chain(conn, chain)[0]

    def lock_audit_chain(self, conn: Connection, chain: str) -> tuple[str, bool]:
        """``lock_audit_head``, and whether the chain was new (its head row created now)."""
        return self.lock_state(conn, "audit_head" if not chain else f"audit_head:{chain}", "0" * 64)

    def lock_state(self, conn: Connection, key: str, default: str) -> tuple[str, bool]:
        """A ``hub_state`` value locked for this transaction (created as ``default`` if missing; True then), for
        a read-modify-write that concurrent writers must not interleave (PostgreSQL's READ COMMITTED would
        let both read the old value); SQLite holds the write lock anyway."""
        rows = self.hot.query(conn, self.hot.state_for_update, (key,))
        if rows:
            return str(rows[0][0]), False
        self.hot.execute(conn, self.hot.insert_state, (key, default))
        rows = self.hot.query(conn, self.hot.state_for_update, (key,))
        return str(rows[0][0]), True

    def audit_next(self, conn: Connection, chain: str, count: int) -> tuple[list[int], int]:
        """``count`` new audit ids, increasing, and the chain's last seq (0: no entries), in one statement; call
        it with the chain locked. PostgreSQL draws the ids from the id sequence (no max(id) + 1 race between
        chains; a rollback leaves a gap); SQLite, under its write lock, continues from the highest id."""
        if self.dialect == "postgresql":
            rows = self.hot.query(conn, self.hot.audit_next, (self._audit_sequence(conn), chain, count))
            return sorted(int(r[0]) for r in rows), int(rows[0][1])
        last_id, last_seq = self.hot.query(conn, self.hot.audit_next, (chain,))[0]
        return list(range(int(last_id) + 1, int(last_id) + 1 + count)), int(last_seq)

    def _audit_sequence(self, conn: Connection) -> str:
        if self._audit_seq is None:
            name = self.hot.query(conn, "SELECT pg_get_serial_sequence('audit', 'id')", ())[0][0]
            if name is None:
                raise StoreError("the audit table has no id sequence: run `attest-hub db upgrade`")
            self._audit_seq = str(name)
        return self._audit_seq

    def audit_chains(self, conn: Connection) -> dict[str, tuple[str | None, str | None]]:
        """Every chain with a recorded head or seal: chain name ('' the hub chain) -> (head, seal)."""
        rows = conn.execute(select(STATE.c.key, STATE.c.value).where(
            STATE.c.key.in_(("audit_head", "audit_seal")) | STATE.c.key.like("audit\\_head:%", escape="\\")
            | STATE.c.key.like("audit\\_seal:%", escape="\\")))
        chains: dict[str, list[str | None]] = {}
        for key, value in rows:
            kind, _, chain = str(key).partition(":")
            chains.setdefault(chain, [None, None])[kind == "audit_seal"] = str(value)
        return {chain: (head, sealed) for chain, (head, sealed) in chains.items()}

    # --- operator views (report, what-if, policy history, bulk enrolment) --------

    def insert_devices(self, conn: Connection, records: Sequence[DeviceRecord]) -> None:
        if records:
            conn.execute(DEVICES.insert(), [r.values() for r in records])

    def latest_evidence(self, conn: Connection, schemes: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Per device, its latest authenticated, appraised verdict of one of ``schemes`` (with the evidence bytes);
        not a late one (action ``late``: older evidence judged after newer)."""
        wanted = (VERDICTS.c.authenticated.is_(True), VERDICTS.c.status != "rejected", VERDICTS.c.action != "late",
                  VERDICTS.c.scheme.in_(sorted(set(schemes))))
        latest = select(func.max(VERDICTS.c.id).label("id")).where(*wanted).group_by(VERDICTS.c.device_id).subquery()
        rows = conn.execute(select(VERDICTS).join(latest, VERDICTS.c.id == latest.c.id))
        return {r.device_id: dict(r._mapping) for r in rows}

    def open_quarantine_commands(self, conn: Connection) -> dict[str, dict[str, Any]]:
        """Per device, its latest quarantine command (when and why it was quarantined)."""
        rows = conn.execute(
            select(COMMANDS.c.device_id, COMMANDS.c.issued_at, COMMANDS.c.reason, COMMANDS.c.seq)
            .where(COMMANDS.c.kind == "quarantine").order_by(COMMANDS.c.device_id, COMMANDS.c.seq)
        )
        return {r.device_id: dict(r._mapping) for r in rows}

    def policy_history(self, conn: Connection, device_class: str | None = None) -> list[dict[str, Any]]:
        query = select(POLICIES).order_by(POLICIES.c.device_class, POLICIES.c.version)
        if device_class:
            query = query.where(POLICIES.c.device_class == device_class)
        return [dict(r._mapping) for r in conn.execute(query)]

    # --- dialect helpers -------------------------------------------------------

    def _insert_ignore(self, table: Any, keys: tuple[str, ...]) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(keys))
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(keys))

    def _upsert(self, table: Any, keys: tuple[str, ...], values: dict[str, Any]) -> Any:
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        stmt = dialect.insert(table).values(values)
        return stmt.on_conflict_do_update(
            index_elements=list(keys), set_={k: v for k, v in values.items() if k not in keys}
        )


def _make_engine(url: str, dialect: str, store: Store | None = None) -> Engine:
    if dialect == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 5.0})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            if cursor.execute("PRAGMA page_count").fetchone()[0]:  # an empty file stays untouched (not a hub)
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            if conn.info.get("reading"):  # Store.reading: a deferred read transaction, no write lock
                conn.exec_driver_sql("BEGIN")
                return
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            if store is not None and store.max_pages > 0:  # a size limit: reaching it is a full disk
                conn.exec_driver_sql(f"PRAGMA max_page_count = {int(store.max_pages)}")

        return engine
    if dialect == "postgresql":
        if url.startswith("postgresql://"):  # SQLAlchemy 2.1 would pick psycopg 3
            url = "postgresql+psycopg2://" + url.split("://", 1)[1]
        # One worker uses one connection at a time on its hot path (plus a reader): a small pool per
        # process keeps N workers x machines well under max_connections. Pre-ping survives server restarts.
        return create_engine(url, pool_size=2, max_overflow=4, pool_pre_ping=True, pool_recycle=1800)
    return create_engine(url)


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def dumps(value: object) -> str:
    return _COMPACT_JSON.encode(value)  # json.dumps(value, separators=(",", ":"), sort_keys=True), encoder reused
