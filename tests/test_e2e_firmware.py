"""Firmware attestation through a real Mosquitto: every simulator profile gets its verdict and action."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sim.fleet import Fleet
from device_sim.records import Profile
from hub import wire
from hub.broker.process import MosquittoProcess
from hub.reference.trust import Tier
from hub.server.localhub import LocalHub
from tests.e2e import Observer, make_env, signed_payload

pytestmark = pytest.mark.broker

MIX = "honest:4,tampered:1,rollback:1,replay:1,forged:1"


def _rounds(fleet: Fleet, count: int, pause: float = 0.3) -> None:
    for _ in range(count):
        fleet.publish_round()
        time.sleep(pause)
    assert fleet.flush(10)


def test_each_profile_gets_its_verdict_and_action(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 8, MIX)
    observer = Observer(broker.host, broker.port, ("fleet/+/result", "fleet/+/cmd")).start()
    with LocalHub(env.settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        _rounds(fleet, 5)
        by_profile = {d.profile: d for d in env.devices}
        assert observer.wait(lambda: all(
            len(observer.on(wire.device_topic(d.device_id, wire.RESULT))) >= 5 for d in env.devices))
        assert fleet.wait_for(lambda: by_profile[Profile.TAMPERED].quarantined
                              and by_profile[Profile.ROLLBACK].quarantined, 10)
    observer.stop()

    for device in env.devices:
        results = [signed_payload(m.payload, env.keys) for m in observer.on(wire.device_topic(device.device_id,
                                                                                                  wire.RESULT))]
        statuses = [r[wire.SUBMODS]["firmware"][wire.EAR_STATUS] for r in results]
        commands = [signed_payload(m.payload, env.keys) for m in observer.on(wire.device_topic(device.device_id,
                                                                                                   wire.COMMAND))]
        kinds = [c[wire.CMD_TYPE] for c in commands]
        status = env.device_status(device.device_id)
        if device.profile is Profile.HONEST:
            assert set(statuses) == {Tier.AFFIRMING}, device
            assert kinds == [] and status == "trusted" and not device.quarantined
        elif device.profile in (Profile.TAMPERED, Profile.ROLLBACK):
            assert set(statuses) == {Tier.CONTRAINDICATED}
            assert kinds == ["quarantine"], "exactly one quarantine command, however many bad verdicts"
            assert status == "quarantined" and device.quarantined
            problem = " ".join(results[0][wire.RES_PROBLEMS])
            assert ("in no manifest" if device.profile is Profile.TAMPERED else "rollback") in problem
        elif device.profile is Profile.FORGED:
            assert set(statuses) == {Tier.CONTRAINDICATED}
            assert all(r[wire.RES_ACTION] == "none" for r in results)
            assert all("bad-signature" in r[wire.RES_PROBLEMS][0] for r in results)
            assert kinds == [] and status == "enrolled", "forged evidence must not move the device"
        elif device.profile is Profile.REPLAY:
            problems = [p for r in results for p in r[wire.RES_PROBLEMS]]
            assert any(p.startswith("replay") for p in problems), problems
            assert kinds == [] and status == "trusted"


def test_results_of_rejected_evidence_are_not_retained(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 2, "honest:1,forged:1")
    with LocalHub(env.settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        _rounds(fleet, 2)
        time.sleep(1.0)
    late = Observer(broker.host, broker.port, ("fleet/+/result",)).start()
    time.sleep(1.0)
    late.stop()
    honest, forged = sorted(env.devices, key=lambda d: d.profile is Profile.FORGED)
    assert len(late.on(wire.device_topic(honest.device_id, wire.RESULT))) == 1, "honest result is retained"
    assert late.on(wire.device_topic(forged.device_id, wire.RESULT)) == [], "a forgery must not replace the state"


def test_restarted_hub_resumes_its_session_and_loses_nothing(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 6, "honest:1")
    with Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        with LocalHub(env.settings):
            assert fleet.wait_for_epoch(10) is not None
            _rounds(fleet, 2)
            assert fleet.wait_for(lambda: len(env.verdicts()) == 12, 15)
        # The hub is down: evidence published now waits in the hub's persistent session at the broker.
        _rounds(fleet, 3, pause=0.1)
        assert len(env.verdicts()) == 12
        with LocalHub(env.settings):
            assert fleet.wait_for(lambda: len(env.verdicts()) == 30, 20), len(env.verdicts())
    verdicts = env.verdicts()
    assert all(v["status"] == "affirming" for v in verdicts)
    assert len({(v["device_id"], v["dedup_key"]) for v in verdicts}) == 30


def test_duplicate_delivery_stores_no_second_verdict(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 1, "honest:1")
    device = env.devices[0]
    observer = Observer(broker.host, broker.port, (wire.device_topic(device.device_id, wire.RESULT),)).start()
    with LocalHub(env.settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        epoch = fleet.wait_for_epoch(10)
        assert epoch is not None
        raw = device.make_evidence(epoch.nonce)
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dup-publisher", protocol=mqtt.MQTTv5)
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = wire.FIRMWARE_MEDIA_TYPE
        for _ in range(3):  # separate batches: a duplicate of committed evidence re-sends its result
            publisher.publish(wire.device_topic(device.device_id, wire.EVIDENCE), raw, qos=1,
                              properties=props).wait_for_publish(5)
            time.sleep(0.5)
        assert observer.wait(lambda: len(observer.on(wire.device_topic(device.device_id, wire.RESULT))) >= 3)
        publisher.disconnect()
        publisher.loop_stop()
    observer.stop()
    verdicts = env.verdicts(device.device_id)
    assert len(verdicts) == 1 and verdicts[0]["status"] == "affirming"


def test_a_reboot_is_detected_and_recorded(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 1, "honest:1")
    device = env.devices[0]
    with LocalHub(env.settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        _rounds(fleet, 2)
        assert fleet.wait_for(lambda: len(env.verdicts()) == 2, 10)
        device.reboot()  # bootcount + 1, sequence starts again at 1
        _rounds(fleet, 1)
        assert fleet.wait_for(lambda: len(env.verdicts()) == 3, 10)
    store = env.store()
    with store.reading() as conn:
        record = store.devices(conn, [device.device_id])[device.device_id]
        audit = [row for row in store.audit_rows(conn) if row["action"] == "reboot"]
    store.close()
    assert record.reboots == 1 and record.bootcount == device.bootcount and record.seq == 1
    assert len(audit) == 1 and audit[0]["device_id"] == device.device_id
    assert all(v["status"] == "affirming" for v in env.verdicts())
