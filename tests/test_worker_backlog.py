"""Two workers after an outage: the backlog the broker queued across both sessions is judged, none of it a replay.

While the hub is down, Mosquitto deals each device's evidence to the two persistent sessions of the shared
subscription in turn. After the restart each worker takes its share, so a device's newer evidence can be
judged before its older; the older pieces are below its mark but within the anti-replay window, never judged,
with a fresh nonce: judged late (RFC 4303 §3.4.3), not refused as replay (docs/RELIABILITY.md).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from device_sim.fleet import Fleet
from hub.broker.process import MosquittoProcess
from hub.server.localhub import LocalHub
from hub.store import Store
from tests.e2e import make_env

DEVICES = 8
ROUNDS = 8  # queued per device while the hub is down: 4 in each session


def _run(broker: MosquittoProcess, tmp_path: Path, replay_window: int) -> tuple[list[dict[str, object]], int]:
    """One round with the hub up, ROUNDS with it down, then both workers on the backlog; every verdict."""
    env = make_env(broker, tmp_path, DEVICES, "honest:1", epoch_period_s=3600.0, batch_max=4)
    settings = replace(env.settings, replay_window=replay_window)
    sent = DEVICES * (1 + ROUNDS)
    with Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        with LocalHub(settings, count=2):  # both identities get a persistent session on the shared subscription
            assert fleet.wait_for_epoch(10) is not None
            fleet.publish_round()  # every device gets a mark
            assert fleet.flush(10)
            store = Store(settings.effective_database_url)
            try:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    with store.reading() as conn:
                        if store.count_verdicts(conn) >= DEVICES:
                            break
                    time.sleep(0.1)
            finally:
                store.close()
        for _ in range(ROUNDS):  # the outage: the broker queues these, dealt in turn to both sessions
            fleet.publish_round()
        assert fleet.flush(10)
        with LocalHub(settings, count=2):
            store = Store(settings.effective_database_url)
            try:
                deadline = time.monotonic() + 40
                while time.monotonic() < deadline:
                    with store.reading() as conn:
                        if store.count_verdicts(conn) >= sent:
                            break
                    time.sleep(0.2)
                with store.reading() as conn:
                    verdicts = [v for d in env.devices for v in store.verdict_history(conn, d.device_id, 1000)]
                    statuses = {d.device_id: store.devices(conn, [d.device_id])[d.device_id].status
                                for d in env.devices}
            finally:
                store.close()
    assert len(verdicts) == sent, "every piece gets exactly one verdict"
    assert set(statuses.values()) == {"trusted"}, statuses
    return verdicts, sum(1 for v in verdicts if v["action"] == "late")


@pytest.mark.broker
@pytest.mark.slow
def test_two_workers_judge_every_honest_piece_of_the_backlog(broker: MosquittoProcess, tmp_path: Path) -> None:
    verdicts, late = _run(broker, tmp_path, replay_window=64)
    refused = [(v["device_id"], v["dedup_key"], v["problems"]) for v in verdicts if v["status"] == "rejected"]
    assert refused == [], f"honest queued evidence refused: {refused}"
    assert {v["status"] for v in verdicts} == {"affirming"}
    assert {v["action"] for v in verdicts} <= {"affirm", "late"}
    assert late > 0, "no piece came after a newer one: the backlog was not reordered, nothing was tested"
