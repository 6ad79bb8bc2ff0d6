"""The detector's tables: per-device state, findings, the verdict cursor and acknowledged measurement sets.

SQLAlchemy Core on the SQLModel tables of hub/store/models.py, inside the
caller's transaction (``Store.transaction`` / ``Store.reading``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from hub.anomaly.stats import AnomalyStateError, DeviceStats
from hub.store import Store
from hub.store.db import DEVICES, STATE, VERDICTS
from hub.store.models import AnomalyFinding, AnomalyStat

FINDINGS = AnomalyFinding.__table__  # type: ignore[attr-defined]
STATS = AnomalyStat.__table__  # type: ignore[attr-defined]
CURSOR_KEY = "anomaly_cursor"
KNOWN_PREFIX = "anomaly_known:"

log = logging.getLogger(__name__)

_VERDICT_COLUMNS = ("id", "device_id", "scheme", "dedup_key", "received_at", "authenticated", "status", "evidence")


def cursor(store: Store, conn: Connection) -> int:
    return int(store.get_state(conn, CURSOR_KEY) or 0)


def max_verdict_id(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(VERDICTS.c.id), 0))).scalar_one())


def verdicts_after(conn: Connection, after: int, horizon: int, limit: int) -> list[dict[str, Any]]:
    """Verdict rows with ``after`` < id <= ``horizon``, in id order."""
    rows = conn.execute(
        select(*[VERDICTS.c[name] for name in _VERDICT_COLUMNS])
        .where(VERDICTS.c.id > after, VERDICTS.c.id <= horizon).order_by(VERDICTS.c.id).limit(limit)
    )
    return [dict(row._mapping) for row in rows]


def device_classes(conn: Connection, ids: Iterable[str]) -> dict[str, str]:
    """Device id -> class of the enrolled devices among ``ids`` (primary-key lookups, chunked)."""
    wanted = sorted(set(ids))
    out: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        rows = conn.execute(select(DEVICES.c.device_id, DEVICES.c.device_class)
                            .where(DEVICES.c.device_id.in_(chunk)))
        out.update({r.device_id: r.device_class for r in rows})
    return out


def held_devices(conn: Connection) -> set[str]:
    return {r.device_id for r in conn.execute(select(DEVICES.c.device_id).where(DEVICES.c.anomaly_hold.is_(True)))}


def status_counts(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(DEVICES.c.status, func.count()).group_by(DEVICES.c.status))
    return {str(status): int(count) for status, count in rows}


def load_stats(conn: Connection) -> dict[str, DeviceStats]:
    out: dict[str, DeviceStats] = {}
    for row in conn.execute(select(STATS)):
        try:
            out[row.device_id] = DeviceStats.from_json(row.device_id, row.device_class, row.state)
        except AnomalyStateError as exc:
            log.warning("anomaly state of %s unreadable, starting afresh: %s", row.device_id, exc,
                        extra={"device_id": row.device_id})
    return out


def stat_rows(stats: Iterable[DeviceStats], now: float) -> list[dict[str, Any]]:
    return [{"device_id": s.device_id, "device_class": s.device_class, "updated_at": now, "state": s.to_json()}
            for s in stats]


def save_stats(conn: Connection, rows: Sequence[dict[str, Any]], existing: set[str]) -> None:
    """Insert or update ``stat_rows``; ``existing``: the device ids that already have a row."""
    new = [r for r in rows if r["device_id"] not in existing]
    old = [{"_id": r["device_id"], **{k: v for k, v in r.items() if k != "device_id"}}
           for r in rows if r["device_id"] in existing]
    if new:
        conn.execute(STATS.insert(), new)
    if old:
        conn.execute(update(STATS).where(STATS.c.device_id == bindparam("_id"))
                     .values(device_class=bindparam("device_class"), updated_at=bindparam("updated_at"),
                             state=bindparam("state")), old)


def findings(conn: Connection, *, open_only: bool = True, device_id: str | None = None, kind: str | None = None,
             limit: int = 1000) -> list[dict[str, Any]]:
    query = select(FINDINGS).order_by(FINDINGS.c.id.desc()).limit(limit)
    if open_only:
        query = query.where(FINDINGS.c.is_open.is_(True))
    if device_id is not None:
        query = query.where(FINDINGS.c.device_id == device_id)
    if kind is not None:
        query = query.where(FINDINGS.c.kind == kind)
    return [dict(r._mapping) for r in conn.execute(query)]


def last_closed_by(conn: Connection, device_ids: Iterable[str] | None = None) -> dict[tuple[str, str], str]:
    """Per (device, kind), who closed its latest closed finding (``detector`` or an operator);
    only for ``device_ids`` when given (the pass asks for the few devices about to open a finding)."""
    latest = select(func.max(FINDINGS.c.id).label("id")).where(FINDINGS.c.is_open.is_(False))
    if device_ids is not None:
        latest = latest.where(FINDINGS.c.device_id.in_(sorted(set(device_ids))))
    sub = latest.group_by(FINDINGS.c.device_id, FINDINGS.c.kind).subquery()
    rows = conn.execute(select(FINDINGS.c.device_id, FINDINGS.c.kind, FINDINGS.c.closed_by)
                        .join(sub, FINDINGS.c.id == sub.c.id))
    return {(r.device_id, r.kind): str(r.closed_by or "") for r in rows}


def insert_findings(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(FINDINGS.insert(), list(rows))


def update_findings(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """``rows``: ``{"_id", "score", "max_score", "explanation", "detail", "last_seen", "is_open", "closed_at",
    "closed_by", "close_reason"}``."""
    if rows:
        names = ("score", "max_score", "explanation", "detail", "last_seen", "is_open", "closed_at", "closed_by",
                 "close_reason")
        # Only still-open findings: an operator's close between the pass's read and its write wins.
        conn.execute(update(FINDINGS).where(FINDINGS.c.id == bindparam("_id"), FINDINGS.c.is_open.is_(True))
                     .values({n: bindparam(n) for n in names}), list(rows))


def close_finding(conn: Connection, finding_id: int, by: str, reason: str, at: float) -> dict[str, Any] | None:
    """Close one open finding (an operator's decision); returns it, or None if it is not open."""
    row = conn.execute(select(FINDINGS).where(FINDINGS.c.id == finding_id, FINDINGS.c.is_open.is_(True))).first()
    if row is None:
        return None
    conn.execute(update(FINDINGS).where(FINDINGS.c.id == finding_id)
                 .values(is_open=False, closed_at=at, closed_by=by, close_reason=reason))
    return dict(row._mapping)


def known_sets(conn: Connection) -> dict[str, frozenset[str]]:
    """Measurement sets operators acknowledged, per class (never rare again)."""
    rows = conn.execute(select(STATE.c.value).where(STATE.c.key.like(KNOWN_PREFIX + "%")))
    out: dict[str, frozenset[str]] = {}
    for row in rows:
        try:
            value = json.loads(row.value)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and isinstance(value.get("sets"), list):
            out[str(value.get("device_class"))] = frozenset(str(v) for v in value["sets"])
    return out


def acknowledge_set(store: Store, conn: Connection, device_class: str, fingerprint: str) -> None:
    """Mark a measurement set as known for a class (the key is bounded: a hash of the class name)."""
    key = KNOWN_PREFIX + hashlib.sha256(device_class.encode()).hexdigest()[:32]
    current = set(known_sets(conn).get(device_class, frozenset()))
    current.add(fingerprint)
    store.set_state(conn, key, json.dumps({"device_class": device_class, "sets": sorted(current)}))
