"""The hub fails: a worker process killed in the middle of a batch, and the whole hub down
for longer than the broker's queue for it holds."""

from __future__ import annotations

import os
import signal
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hub.broker.process import BROKER_CONFIG_DIR, MosquittoProcess, _listens, free_port
from hub.server.localhub import LocalHub
from tests.e2e import make_env
from tests.faults.rig import DEVICES, FAST_HUB, MIX, FaultReport, FaultRun, HubProcess, make_fleet, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _not_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return int(response.status) != 200
    except urllib.error.HTTPError as exc:
        return exc.code == 503
    except OSError:
        return False


def test_worker_killed_mid_batch(run: FaultRun) -> None:
    """Worker 1 holds a batch it cannot commit (another writer has the database) when SIGKILL comes:
    nothing of it was acknowledged, so the broker keeps it for that identity, and the supervisor's
    restarted worker 1 gets it again."""
    metrics_port = free_port()
    hub = HubProcess(run.env, workers=2, extra_env={"ATTEST_HUB_METRICS_PORT": str(metrics_port)}).start()
    try:
        run.begin()
        blocker = sqlite3.connect(run.env.settings.state_dir / "hub.db", isolation_level=None, timeout=30)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            wait_until(lambda: _not_ready(metrics_port + 1), 30, "worker 1 holding an uncommitted batch")
            victim = next(p for p in hub.worker_pids() if _listens(p, metrics_port + 1))
            os.kill(victim, signal.SIGKILL)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        wait_until(lambda: victim not in hub.worker_pids() and len(hub.worker_pids()) == 2, 20,
                   "the supervisor restarting worker 1")
        recovery = run.recover()
        run.finish(recovery, notes="2 workers; SIGKILL while retrying an uncommitted batch")
    finally:
        hub.stop()


def test_hub_down_longer_than_the_broker_queue(tmp_path: Path, fault_reports: list[FaultReport]) -> None:
    """max_queued_messages 5: the broker keeps 5 messages for the offline hub, drops the rest and still
    PUBACKs them. The devices hold that evidence until results name it and re-send it with backoff."""
    template = tmp_path / "small-queue.conf"
    text = (BROKER_CONFIG_DIR / "dev.conf").read_text(encoding="utf-8")
    assert "max_queued_messages 100000" in text
    template.write_text(text.replace("max_queued_messages 100000", "max_queued_messages 5"), encoding="utf-8")
    with MosquittoProcess(template, tmp_path / "broker") as broker:
        env = make_env(broker, tmp_path, DEVICES, MIX, **FAST_HUB)
        run = FaultRun("hub_down_longer_than_the_broker_queue", env, [make_fleet(env, env.devices)], fault_reports)
        try:
            hub = LocalHub(env.settings).start()
            run.begin()
            hub.stop()
            before = sum(len(d.evidence_log) for d in env.devices)
            wait_until(lambda: sum(len(d.evidence_log) for d in env.devices) >= before + 40, 20,
                       "40 pieces of evidence published while the hub is down")
            with LocalHub(env.settings):
                recovery = run.recover()
                report = run.finish(recovery, notes="max_queued_messages 5")
            assert report.resent > 0, "the broker dropped messages: only re-sends can have recovered them"
        finally:
            run.close()
