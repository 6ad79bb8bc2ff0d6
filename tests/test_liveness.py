"""Liveness deadlines: counted in epochs, kept in the database, enforced by policy."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from device_sim.fleet import Fleet
from hub import wire
from hub.appraisal.liveness import deadline_epoch
from hub.broker.process import MosquittoProcess
from hub.reference.policy import Policy
from hub.server.localhub import LocalHub
from tests.e2e import Observer, make_env, signed_payload


def test_deadline_is_one_interval_of_epochs_plus_grace() -> None:
    assert deadline_epoch(10, Policy(attestation_interval_s=300), 300.0) == 12
    assert deadline_epoch(10, Policy(attestation_interval_s=900), 300.0) == 14
    assert deadline_epoch(10, Policy(attestation_interval_s=1), 300.0) == 12


def _policy(device_class: str, missed: str) -> str:
    return (f'device_class = "{device_class}"\nversion = 99\nattestation_interval_s = 1\n'
            f'missed = "{missed}"\n')


@pytest.mark.broker
def test_silent_devices_miss_their_deadline_and_policy_decides(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 2, "honest:1", epoch_period_s=1.0)
    warned, quarantined = env.devices  # env-sensor, smart-meter
    store = env.store()
    with store.transaction() as conn:
        store.save_policy(conn, warned.device_class, 99, _policy(warned.device_class, "warning"))
        store.save_policy(conn, quarantined.device_class, 99, _policy(quarantined.device_class, "quarantine"))
    store.close()
    commands = Observer(broker.host, broker.port, (wire.device_topic(quarantined.device_id, wire.COMMAND),)).start()
    with Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        with LocalHub(env.settings):
            assert fleet.wait_for_epoch(10) is not None
            fleet.publish_round()
            assert fleet.wait_for(lambda: env.device_status(warned.device_id) == "trusted", 10)
            deadline_before = _deadline(env, warned.device_id)
        # Hub down for 3 s: epochs do not advance, so nobody misses a deadline meanwhile.
        time.sleep(3)
        with LocalHub(env.settings):
            assert _deadline(env, warned.device_id) == deadline_before, "deadline kept across a restart"
            assert fleet.wait_for(lambda: env.device_status(warned.device_id) == "missed-attestation", 15)
            assert fleet.wait_for(lambda: env.device_status(quarantined.device_id) == "quarantined", 15)
            assert fleet.wait_for(lambda: quarantined.quarantined, 10), "the device got the signed command"
            fleet.publish_round()  # fresh evidence brings the warned device back
            assert fleet.wait_for(lambda: env.device_status(warned.device_id) == "trusted", 10)
    commands.stop()
    kinds = [signed_payload(m.payload, env.keys)[wire.CMD_TYPE] for m in commands.messages]
    assert kinds[0] == "quarantine"


def _deadline(env, device_id: str) -> float | None:  # type: ignore[no-untyped-def]
    store = env.store()
    try:
        with store.reading() as conn:
            return store.devices(conn, [device_id])[device_id].next_deadline
    finally:
        store.close()
