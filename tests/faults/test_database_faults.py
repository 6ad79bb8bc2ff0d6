"""The database fails: SQLite locked by another writer, SQLite full, PostgreSQL restarted.

In each the hub cannot commit; it acknowledges nothing, retries with backoff, reports not
ready, and once the database is back the broker's redeliveries and the devices' re-sends
give every piece of evidence exactly one verdict.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hub.broker.process import MosquittoProcess
from hub.server.localhub import LocalHub
from tests.e2e import HubEnv, fresh_pg_database, make_env
from tests.faults.rig import DEVICES, FAST_HUB, MIX, FaultReport, FaultRun, make_fleet, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _cannot_commit(hub: LocalHub) -> bool:
    return any(not w.health.database_ok for w in hub.workers)


def test_sqlite_locked_by_another_writer(run: FaultRun) -> None:
    with LocalHub(run.env.settings) as hub:
        run.begin()
        blocker = sqlite3.connect(run.env.settings.state_dir / "hub.db", isolation_level=None, timeout=30)
        blocker.execute("BEGIN IMMEDIATE")
        try:  # longer than the hub's busy timeout (5 s): its commit fails and it must not acknowledge
            wait_until(lambda: _cannot_commit(hub), 20, "the hub failing to commit")
            assert all(not w.view.ready() for w in hub.workers if not w.health.database_ok)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        recovery = run.recover()
        run.finish(recovery, notes="BEGIN IMMEDIATE held past the 5 s busy timeout")


def test_sqlite_disk_full(run: FaultRun) -> None:
    """A size-limited database (``sqlite_max_pages``) fills up mid-stream; space is then freed."""
    db = sqlite3.connect(run.env.settings.state_dir / "hub.db")
    pages = int(db.execute("PRAGMA page_count").fetchone()[0])
    db.close()
    settings = replace(run.env.settings, sqlite_max_pages=pages + 12)
    with LocalHub(settings) as hub:
        run.begin(warmup_rounds=1)
        wait_until(lambda: _cannot_commit(hub), 20, "the database filling up")
        time.sleep(1.0)  # the disk stays full a while; evidence keeps coming
        for worker in hub.workers:  # space freed (the limit raised): no restart
            worker.store.max_pages = 1_000_000_000
        recovery = run.recover()
        run.finish(recovery, notes=f"limit {pages + 12} pages, then lifted")


@pytest.fixture
def pg_env(broker: MosquittoProcess, tmp_path: Path) -> HubEnv:
    return make_env(broker, tmp_path, DEVICES, MIX, database_url=fresh_pg_database(), **FAST_HUB)


def _pg_cluster(action: str, *, check: bool = True) -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=check,
                   capture_output=True, timeout=60)


@pytest.fixture
def pg_running() -> Iterator[None]:
    """Whatever happens in the test, the server is left running (starting a running one is a no-op)."""
    try:
        yield
    finally:
        _pg_cluster("start", check=False)


@pytest.mark.postgres
def test_postgresql_stopped_and_restarted(pg_env: HubEnv, pg_running: None,
                                          fault_reports: list[FaultReport]) -> None:
    run = FaultRun("postgresql_stopped_and_restarted", pg_env, [make_fleet(pg_env, pg_env.devices)], fault_reports)
    try:
        with LocalHub(pg_env.settings) as hub:
            run.begin()
            _pg_cluster("stop")
            try:
                wait_until(lambda: _cannot_commit(hub), 20, "the hub failing to commit")
                time.sleep(1.0)  # the outage goes on a while; evidence keeps coming
            finally:
                _pg_cluster("start")
            recovery = run.recover()
            run.finish(recovery, notes="pg_ctlcluster stop, start")
    finally:
        run.close()
