"""Closed-loop remediation through a real Mosquitto with mutual TLS and broker enforcement:
quarantine, a signed remediate command naming an approved release, install, reboot, fresh
evidence, release (automatic or by an operator), and data flowing again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from device_sim.device import SimDevice
from device_sim.fleet import Fleet
from device_sim.records import Profile
from hub import wire
from hub.appraisal import transitions
from hub.appraisal.operations import set_quarantine
from hub.broker.enforcement import enforcer_from_settings
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import open_store
from hub.server.localhub import LocalHub
from tests.enforcement_env import SecureEnv, TlsObserver, make_secure_env, wait_for

if TYPE_CHECKING:
    from tests.conftest import ProdBroker

pytestmark = pytest.mark.broker

SUCCESS = (0x00, 0x10)


def _rounds_until(fleet: Fleet, predicate: object, timeout: float = 30) -> bool:
    def step() -> bool:
        fleet.publish_round()
        fleet.flush(5)
        return bool(predicate())  # type: ignore[operator]
    return wait_for(step, timeout, poll=0.2)


def _data_flows_again(env: SecureEnv, fleet: Fleet, device: SimDevice) -> None:
    observer = TlsObserver(env, wire.device_topic(device.device_id, wire.DATA))
    try:
        before = len(fleet.data_reason_codes(device.device_id))
        assert _rounds_until(fleet, lambda: observer.drain() != [])
        assert fleet.flush(5)
        after = fleet.data_reason_codes(device.device_id)[before:]
        assert after and all(code in SUCCESS for code in after)
    finally:
        observer.close()


def test_remediated_device_is_released_automatically_and_its_data_flows_again(
    prod_broker: ProdBroker, tmp_path: Path
) -> None:
    env = make_secure_env(prod_broker, tmp_path, "honest:1,tampered:1", 2, remediation=True)
    device = next(d for d in env.devices if d.profile is Profile.TAMPERED)
    with LocalHub(env.settings) as hub:
        fleet = env.fleet(hub, data=True)
        with fleet:
            assert fleet.wait_for_epoch(10) is not None
            assert _rounds_until(fleet, lambda: device.remediations != () and not device.quarantined
                                 and env.status(device.device_id) == transitions.TRUSTED)
            assert device.remediations == ("1.2.0",) and device.bootcount == 2 and not device.quarantined
            _data_flows_again(env, fleet, device)
    entries = env.audit(device.device_id)
    steps = [(r["action"], json.loads(r["detail"])) for r in entries if r["action"] in ("status", "remediating")]
    (_, quarantined), (_, remediating), (_, released) = steps[:3]
    assert quarantined["to"] == transitions.QUARANTINED and quarantined["action"] == "quarantine"
    assert quarantined["reason"] and quarantined["evidence"] == "1:1"
    assert remediating["release"] == "1.2.0" and remediating["evidence"] == quarantined["evidence"]
    assert remediating["reason"] == quarantined["reason"]
    assert released["from"] == transitions.QUARANTINED and released["to"] == transitions.TRUSTED
    assert released["action"] == "release" and released["evidence"] != quarantined["evidence"]
    assert released["reason"] == "attested affirming"


def test_operator_release_policy_keeps_a_remediated_device_quarantined_until_released(
    prod_broker: ProdBroker, tmp_path: Path
) -> None:
    env = make_secure_env(prod_broker, tmp_path, "honest:1,rollback:1", 2, remediation=True)
    device = next(d for d in env.devices if d.profile is Profile.ROLLBACK)
    store = open_store(env.settings)
    try:
        with store.transaction() as conn:
            assert store.save_policy(conn, device.device_class, 1000,
                                     f'device_class = "{device.device_class}"\nversion = 1000\nrelease = "operator"\n')
    finally:
        store.close()
    with LocalHub(env.settings) as hub:
        fleet = env.fleet(hub, data=True)
        with fleet:
            assert fleet.wait_for_epoch(10) is not None
            assert _rounds_until(fleet, lambda: device.remediations == ("1.2.0",)
                                 and _verdict_actions(env, device)[-1:] == ["awaiting-operator-release"])
            assert env.status(device.device_id) == transitions.QUARANTINED and device.quarantined
            assert device.version == "1.2.0" and device.bootcount == 2
            store = open_store(env.settings)
            try:
                message = set_quarantine(store, load_hub_keys(env.settings), device.device_id, False,
                                         "remediated to 1.2.0, checked", 3600,
                                         enforcer=enforcer_from_settings(env.settings))
            finally:
                store.close()
            hub.workers[0].transport.publish_all([message])
            assert wait_for(lambda: not device.quarantined, 10)
            _data_flows_again(env, fleet, device)


def _verdict_actions(env: SecureEnv, device: SimDevice) -> list[str]:
    store = open_store(env.settings)
    try:
        with store.reading() as conn:
            history = store.verdict_history(conn, device.device_id, limit=100)
    finally:
        store.close()
    ordered = sorted(history, key=lambda v: v["received_at"])
    return [v["action"] for v in ordered if v["status"] != "rejected"]
