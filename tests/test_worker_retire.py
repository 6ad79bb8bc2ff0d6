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
                assert store.get_state(conn, IDENTITIES_KEY) == "1"
        finally:
            stop.set()
            supervisor.join(30)
    finally:
        store.close()
