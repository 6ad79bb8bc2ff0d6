"""Per-device, per-minute counts of rejected evidence (table ``rejection_count``).

Every rejection of an enrolled device's evidence is counted here, inside the
batch's transaction; only the first few per minute also get a verdict row of
their own (hub/appraisal/storage.py). The leader's anomaly pass reads the
counts (hub/anomaly/rejections.py); retention prunes old minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects import postgresql, sqlite

from hub.store.db import Store
from hub.store.models import RejectionCount

REJECTIONS = RejectionCount.__table__  # type: ignore[attr-defined]


def add_rejections(store: Store, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Add ``rows`` (``{"device_id", "minute", "rejected", "authenticated", "bytes_received"}``) to the
    counts, creating a minute's row on first use (one executemany upsert)."""
    if not rows:
        return
    dialect = postgresql if store.dialect == "postgresql" else sqlite
    stmt = dialect.insert(REJECTIONS)
    stmt = stmt.on_conflict_do_update(
        index_elements=["device_id", "minute"],
        set_={name: REJECTIONS.c[name] + stmt.excluded[name]
              for name in ("rejected", "authenticated", "bytes_received")},
    )
    conn.execute(stmt, list(rows))


def rejections_since(conn: Connection, minute: int) -> dict[str, dict[int, int]]:
    """Per device, ``{minute: rejected}`` for the minutes from ``minute`` on."""
    out: dict[str, dict[int, int]] = {}
    query = select(REJECTIONS.c.device_id, REJECTIONS.c.minute, REJECTIONS.c.rejected).where(
        REJECTIONS.c.minute >= minute)
    for row in conn.execute(query):
        out.setdefault(str(row.device_id), {})[int(row.minute)] = int(row.rejected)
    return out


def total_rejections(conn: Connection, device_id: str) -> int:
    """Every counted rejection of one device (for operators and tests)."""
    query = select(func.coalesce(func.sum(REJECTIONS.c.rejected), 0)).where(REJECTIONS.c.device_id == device_id)
    return int(conn.execute(query).scalar_one())
