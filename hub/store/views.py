"""Reads and writes of the HTTP API (hub/server/api/): device pages, commands, results, bearer tokens.

SQLAlchemy Core on the tables of ``models``, inside the caller's transaction
(``Store.reading`` / ``Store.transaction``). Device pages are keyset-paged on
the primary key, so a page costs the same at any depth and fleet size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select, update

from hub.store.db import _DEVICE_FIELDS, AUDIT, COMMANDS, DEVICES, RESULTS, VERDICTS, DeviceRecord
from hub.store.models import ApiToken

TOKENS = ApiToken.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """Which devices a page holds; None means any. Times are Unix seconds."""

    device_class: str | None = None
    status: str | None = None
    firmware: str | None = None
    seen_after: float | None = None
    seen_before: float | None = None
    id_prefix: str | None = None


def device_page(conn: Connection, where: DeviceFilter, after: str | None, limit: int) -> list[DeviceRecord]:
    """Up to ``limit`` devices matching ``where`` with ids greater than ``after``, in id order."""
    query = select(*[DEVICES.c[n] for n in _DEVICE_FIELDS]).order_by(DEVICES.c.device_id).limit(limit)
    if after is not None:
        query = query.where(DEVICES.c.device_id > after)
    if where.device_class is not None:
        query = query.where(DEVICES.c.device_class == where.device_class)
    if where.status is not None:
        query = query.where(DEVICES.c.status == where.status)
    if where.firmware is not None:
        query = query.where(DEVICES.c.firmware_version == where.firmware)
    if where.seen_after is not None:
        query = query.where(DEVICES.c.last_seen >= where.seen_after)
    if where.seen_before is not None:
        query = query.where((DEVICES.c.last_seen < where.seen_before) | DEVICES.c.last_seen.is_(None))
    if where.id_prefix:
        # A range on the primary key (not LIKE): indexed, and no wildcard characters to escape.
        query = query.where(DEVICES.c.device_id >= where.id_prefix,
                            DEVICES.c.device_id < where.id_prefix + "\U0010ffff")
    return [DeviceRecord(*row) for row in conn.execute(query)]


def count_by(conn: Connection, column: str) -> dict[str, int]:
    """Devices per value of ``column`` (``status`` or ``device_class``)."""
    col = DEVICES.c[column]
    return {str(value): int(n) for value, n in conn.execute(select(col, func.count()).group_by(col))}


def commands_for(conn: Connection, device_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """The device's newest commands (without their signed bytes), newest first."""
    rows = conn.execute(
        select(COMMANDS.c.seq, COMMANDS.c.kind, COMMANDS.c.reason, COMMANDS.c.issued_at, COMMANDS.c.expires_at)
        .where(COMMANDS.c.device_id == device_id).order_by(COMMANDS.c.seq.desc()).limit(limit)
    )
    return [dict(r._mapping) for r in rows]


def verdicts_for(conn: Connection, device_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """The device's newest verdicts without their evidence bytes, newest first."""
    columns = [c for c in VERDICTS.c if c.name != "evidence"]
    rows = conn.execute(select(*columns).where(VERDICTS.c.device_id == device_id)
                        .order_by(VERDICTS.c.id.desc()).limit(limit))
    return [dict(r._mapping) for r in rows]


def latest_result(conn: Connection, device_id: str) -> dict[str, Any] | None:
    """The device's latest retained result: scheme, issued_at and the signed COSE_Sign1 bytes."""
    row = conn.execute(select(RESULTS).where(RESULTS.c.device_id == device_id)).first()
    return None if row is None else dict(row._mapping)


def recent_status_changes(conn: Connection, after_id: int, limit: int = 200) -> list[dict[str, Any]]:
    """Audit entries after ``after_id`` that changed a device's status (for live updates)."""
    rows = conn.execute(
        select(AUDIT.c.id, AUDIT.c.at, AUDIT.c.action, AUDIT.c.device_id, AUDIT.c.detail)
        .where(AUDIT.c.id > after_id, AUDIT.c.action.in_(("status", "quarantine", "release", "revoke", "verdict")))
        .order_by(AUDIT.c.id).limit(limit)
    )
    return [dict(r._mapping) for r in rows]


class ChangeFeed:
    """Status changes for a live view, each delivered once, including entries that commit out of id order.

    On PostgreSQL audit ids come from a sequence and several workers commit concurrently, so an entry can
    become visible after a higher id was already read. The feed re-reads a window of ``lookback`` ids below
    the highest it has seen and delivers what it has not yet delivered; ids it has delivered are kept
    only for that window (memory is bounded by ``lookback``)."""

    def __init__(self, conn: Connection, lookback: int = 2048) -> None:
        self.lookback = lookback
        self.high = last_audit_id(conn)
        self.seen = {int(r["id"]) for r in self._window(conn) if int(r["id"]) <= self.high}

    def _window(self, conn: Connection) -> list[dict[str, Any]]:
        return recent_status_changes(conn, max(0, self.high - self.lookback), self.lookback + 200)

    def poll(self, conn: Connection) -> list[dict[str, Any]]:
        """The changes not delivered before, in id order."""
        fresh = [r for r in self._window(conn) if int(r["id"]) not in self.seen]
        for row in fresh:
            self.seen.add(int(row["id"]))
            self.high = max(self.high, int(row["id"]))
        floor = self.high - self.lookback
        self.seen = {i for i in self.seen if i > floor}
        return fresh


def audit_after(conn: Connection, after_id: int, since: float | None, until: float | None,
                limit: int) -> list[dict[str, Any]]:
    """Audit rows with id > ``after_id`` (and ``since`` <= at < ``until``), in id order: one export chunk."""
    query = select(AUDIT).where(AUDIT.c.id > after_id).order_by(AUDIT.c.id).limit(limit)
    if since is not None:
        query = query.where(AUDIT.c.at >= since)
    if until is not None:
        query = query.where(AUDIT.c.at < until)
    return [dict(r._mapping) for r in conn.execute(query)]


def last_audit_id(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(AUDIT.c.id), 0))).scalar_one())


# --- bearer tokens ------------------------------------------------------------------------------------------


def insert_token(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(TOKENS.insert(), [row])


def token(conn: Connection, token_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(TOKENS).where(TOKENS.c.token_id == token_id)).first()
    return None if row is None else dict(row._mapping)


def tokens(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(select(TOKENS).order_by(TOKENS.c.created_at))]


def revoke_token(conn: Connection, token_id: str, at: float) -> bool:
    """Mark a token revoked; False if there is no such token or it already was."""
    result = conn.execute(update(TOKENS).where(TOKENS.c.token_id == token_id, TOKENS.c.revoked_at.is_(None))
                          .values(revoked_at=at))
    return bool(result.rowcount == 1)
