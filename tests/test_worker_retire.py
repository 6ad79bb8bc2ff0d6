"""Fewer workers than before: the retired identities' persistent sessions are drained and ended, so no
evidence is stranded in a session nobody connects to again; the workers log at the supervisor's verbosity."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from device_sim.fleet import Fleet
from hub.broker.process import MosquittoProcess
from hub.server.localhub import LocalHub
from hub.server.supervisor import run_workers
from hub.server.worker import IDENTITIES_KEY
from hub.store import Store
from tests.e2e import make_env


@pytest.mark.broker
@pytest.mark.slow
def test_a_start_with_fewer_workers_drains_the_retired_session(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 12, "honest:1", epoch_period_s=3600.0)
    with Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        with LocalHub(env.settings, count=2):  # both identities get a persistent session on the shared subscription
            assert fleet.wait_for_epoch(10) is not None
        for _ in range(2):  # the hub is down: the broker queues these among both sessions
            fleet.publish_round()
        assert fleet.flush(10)
    sent = 24
    store = Store(env.settings.effective_database_url)
    try:
        with store.reading() as conn:
            assert store.get_state(conn, IDENTITIES_KEY) == "2"
        stop = threading.Event()
        supervisor = threading.Thread(target=run_workers, args=(replace(env.settings), 1, stop, 0), daemon=True)
        supervisor.start()
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                with store.reading() as conn:
                    if store.count_verdicts(conn) >= sent:
                        break
                time.sleep(0.2)
            with store.reading() as conn:
                assert store.count_verdicts(conn) == sent, "evidence stranded in the retired worker's session"
            deadline = time.monotonic() + 20  # the drain runs beside the worker and ends after 2 s of quiet
            while time.monotonic() < deadline:
                with store.reading() as conn:
                    if store.get_state(conn, IDENTITIES_KEY) == "1":
                        break
                time.sleep(0.2)
            with store.reading() as conn:
                assert store.get_state(conn, IDENTITIES_KEY) == "1", "the retired identity was not forgotten"
        finally:
            stop.set()
            supervisor.join(30)
    finally:
        store.close()


@pytest.mark.postgres
def test_workers_starting_together_record_the_highest_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker raises the recorded identity count at start; on PostgreSQL (READ COMMITTED) two that read
    it at once must not both write what they read plus one (a lost update left "1" after two workers, and a
    later start with one worker then stranded worker 1's session)."""
    from helpers import new_store

    from hub.server.worker import record_identity
    from tests.e2e import fresh_pg_database

    store = new_store(tmp_path / "hub", fresh_pg_database())
    original = Store.set_state

    def slow_first(self: Store, conn: object, key: str, value: str) -> None:
        if key == IDENTITIES_KEY and value == "1":
            time.sleep(0.5)  # worker 0 has read the count and is about to write it
        original(self, conn, key, value)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "set_state", slow_first)
    try:
        first = threading.Thread(target=record_identity, args=(store, 0))
        first.start()
        time.sleep(0.15)
        record_identity(store, 1)  # reads while worker 0 holds the value, commits first without the lock
        first.join()
        with store.reading() as conn:
            assert store.get_state(conn, IDENTITIES_KEY) == "2"
    finally:
        store.close()


@pytest.mark.broker
def test_the_workers_start_while_a_retired_identity_drains(
        broker: MosquittoProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers must not wait for a retired identity's drain: while it lasts (up to its limit), the live
    evidence needs them."""
    from hub.server.worker import HubWorker

    env = make_env(broker, tmp_path, 1, "honest:1", epoch_period_s=3600.0)
    with LocalHub(env.settings, count=2):  # identity 1 gets a persistent session
        pass
    worker_running = threading.Event()
    seen_during_drain: list[bool] = []
    run, drain = HubWorker.run, HubWorker.drain

    def running(self: HubWorker, stop: threading.Event) -> None:
        worker_running.set()
        run(self, stop)

    def slow_drain(self: HubWorker, stop: threading.Event, **kwargs: float) -> int:
        seen_during_drain.append(worker_running.wait(10))  # the drain of identity 1 is still going on
        return drain(self, stop, **kwargs)

    monkeypatch.setattr(HubWorker, "run", running)
    monkeypatch.setattr(HubWorker, "drain", slow_drain)
    stop = threading.Event()
    supervisor = threading.Thread(target=run_workers, args=(replace(env.settings), 1, stop, 0), daemon=True)
    supervisor.start()
    try:
        deadline = time.monotonic() + 20
        while not seen_during_drain and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        supervisor.join(30)
    assert seen_during_drain == [True], "worker 0 started only after the retired identity's drain"


@pytest.mark.broker
@pytest.mark.slow
def test_a_retired_identity_takes_no_live_evidence_and_ends_under_a_steady_load(
        broker: MosquittoProcess, tmp_path: Path) -> None:
    """The drain resumes the retired session unsubscribed (MQTT 5 §3.10.4): the broker adds no live evidence
    to it, so it ends after its backlog while the devices keep publishing (it used to take its turn of the
    live evidence and end only after 2 s without any, or at its 300 s limit)."""
    env = make_env(broker, tmp_path, 6, "honest:1", epoch_period_s=3600.0)
    with Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        with LocalHub(env.settings, count=2):
            assert fleet.wait_for_epoch(10) is not None
        fleet.publish_round()  # the hub is down: queued among both sessions
        assert fleet.flush(10)
        store = Store(env.settings.effective_database_url)
        stop = threading.Event()
        supervisor = threading.Thread(target=run_workers, args=(replace(env.settings), 1, stop, 0), daemon=True)
        supervisor.start()
        rounds, ended_at = 1, None
        try:
            started = time.monotonic()
            while time.monotonic() - started < 12:  # a round every 0.25 s: never 2 s without live evidence
                fleet.publish_round()
                rounds += 1
                with store.reading() as conn:
                    if ended_at is None and store.get_state(conn, IDENTITIES_KEY) == "1":
                        ended_at = time.monotonic() - started
                time.sleep(0.25)
            assert fleet.flush(10)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with store.reading() as conn:
                    if store.count_verdicts(conn) >= rounds * 6:
                        break
                time.sleep(0.2)
            with store.reading() as conn:
                assert store.count_verdicts(conn) == rounds * 6, "evidence lost or stranded"
        finally:
            stop.set()
            supervisor.join(30)
            store.close()
    assert ended_at is not None, "the retired identity kept draining live evidence"
    assert ended_at < 10, ended_at
