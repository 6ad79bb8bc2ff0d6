"""Readers that page the audit log by id while workers write it.

On PostgreSQL audit ids come from a sequence and workers commit concurrently, so an entry can become visible
after a higher id was read. The console's live feed must still deliver it (once), and an export or `audit
verify` must see one moment of the log, not rows from one moment and chain heads from a later one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from e2e import fresh_pg_database
from helpers import new_store

from hub.store import Store
from hub.store.db import AUDIT
from hub.store.views import ChangeFeed


def _entry(ident: int, action: str = "status", device_id: str = "env-sensor-0001") -> dict[str, Any]:
    return {"id": ident, "at": float(ident), "actor": "hub", "action": action, "device_id": device_id,
            "detail": json.dumps({"to": "trusted"}), "prev_hash": "0" * 64, "entry_hash": f"{ident:064x}",
            "chain": f"test-{ident}", "seq": 1}


def _commit(store: Store, *idents: int) -> None:
    with store.transaction() as conn:
        conn.execute(AUDIT.insert(), [_entry(i) for i in idents])


def _poll(store: Store, feed: ChangeFeed) -> list[int]:
    with store.reading() as conn:
        return [int(r["id"]) for r in feed.poll(conn)]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = fresh_pg_database() if request.param == "postgresql" else ""
    opened = new_store(tmp_path / "hub", url)
    yield opened
    opened.close()


def test_the_feed_delivers_an_entry_that_commits_after_a_higher_id_once(store: Store) -> None:
    _commit(store, 1000, 1001)
    with store.reading() as conn:
        feed = ChangeFeed(conn, lookback=64)  # what existed when the view opened is not news
    assert _poll(store, feed) == []
    _commit(store, 1010, 1012)
    assert _poll(store, feed) == [1010, 1012]
    _commit(store, 1011)  # reserved before 1012, committed after it was read
    assert _poll(store, feed) == [1011]
    assert _poll(store, feed) == []
    _commit(store, 1013)
    assert _poll(store, feed) == [1013]


def test_the_feed_forgets_ids_below_its_window_and_keeps_up_with_bursts(store: Store) -> None:
    with store.reading() as conn:
        feed = ChangeFeed(conn, lookback=16)
    _commit(store, *range(2000, 2400))  # a burst far longer than the window
    delivered: list[int] = []
    for _ in range(10):
        delivered += _poll(store, feed)
    assert delivered == list(range(2000, 2400))
    assert len(feed.seen) <= 16


def test_a_snapshot_does_not_see_what_commits_after_its_first_read(tmp_path: Path) -> None:
    """The export and `audit verify` read through Store.snapshot: REPEATABLE READ on PostgreSQL."""
    store = new_store(tmp_path / "hub", fresh_pg_database())
    try:
        _commit(store, 3000)
        with store.snapshot() as conn:
            before = conn.execute(AUDIT.select().where(AUDIT.c.id >= 3000)).fetchall()
            _commit(store, 2999, 3001)  # another worker, meanwhile
            after = conn.execute(AUDIT.select().where(AUDIT.c.id >= 2999)).fetchall()
        assert [r.id for r in before] == [3000] and [r.id for r in after] == [3000]
        with store.reading() as conn:
            assert sorted(r.id for r in conn.execute(AUDIT.select().where(AUDIT.c.id >= 2999))) == [2999, 3000, 3001]
    finally:
        store.close()
