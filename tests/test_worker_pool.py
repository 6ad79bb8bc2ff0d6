"""``serve --workers N``: N processes on one shared subscription; a dead worker comes back under its identity."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from device_sim.fleet import Fleet
from hub import wire
from hub.broker.process import MosquittoProcess
from hub.server.supervisor import run_workers
from tests.e2e import Observer, make_env

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _workers() -> dict[str, multiprocessing.Process]:
    return {p.name: p for p in multiprocessing.active_children() if p.name.startswith("hub-w")}


def _wait(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_killed_worker_is_restarted_under_the_same_identity_and_gets_its_queued_evidence(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    env = make_env(broker, tmp_path, 12, "honest:1", epoch_period_s=3600.0)
    stop = threading.Event()
    supervisor = threading.Thread(target=run_workers, args=(replace(env.settings), 2, stop, 0), daemon=True)
    supervisor.start()
    observer = Observer(broker.host, broker.port, (f"{wire.FLEET_ROOT}/+/{wire.RESULT}",)).start()
    try:
        assert _wait(lambda: set(_workers()) == {"hub-w0", "hub-w1"})
        with Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
            assert fleet.wait_for_epoch(20) is not None
            time.sleep(1.0)  # both workers subscribed
            fleet.publish_round()
            assert observer.wait(lambda: len(observer.messages) >= 12, 20)

            victim = _workers()["hub-w1"]
            os.kill(victim.pid or 0, signal.SIGKILL)
            assert _wait(lambda: not victim.is_alive())
            # Published while hub-w1 is dead: the broker queues its share in hub-w1's session.
            fleet.publish_round()
            assert fleet.flush(10)
            assert _wait(lambda: "hub-w1" in _workers() and _workers()["hub-w1"].pid != victim.pid)
            assert observer.wait(lambda: len(observer.messages) >= 24, 30), \
                "evidence queued for the dead worker never came back: restarted under another identity?"
    finally:
        observer.stop()
        stop.set()
        supervisor.join(30)
    assert _wait(lambda: not _workers(), 30), "the supervisor stops its workers"
    log = broker.log_path.read_text()
    assert log.count(f"as {env.settings.hub_id}-w1") >= 2, "the restarted worker reconnected as hub-w1"
    verdicts = env.verdicts()
    assert len(verdicts) == 24 and {v["status"] for v in verdicts} == {"affirming"}


def test_each_worker_process_has_its_own_persistent_identity(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 4, "honest:1")
    stop = threading.Event()
    supervisor = threading.Thread(target=run_workers, args=(replace(env.settings), 3, stop, 0), daemon=True)
    supervisor.start()
    try:
        assert _wait(lambda: set(_workers()) == {"hub-w0", "hub-w1", "hub-w2"})
        assert _wait(lambda: all(f"as {env.settings.hub_id}-w{i}" in broker.log_path.read_text() for i in range(3)))
    finally:
        stop.set()
        supervisor.join(30)
    log = broker.log_path.read_text()
    for index in range(3):  # MQTT v5 (p5), clean start off (c0): a persistent session per worker
        assert f"as {env.settings.hub_id}-w{index} (p5, c0" in log
