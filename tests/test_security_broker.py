"""Attacks through a real Mosquitto: the hub (LocalHub), the simulated fleet, and a raw attacker client."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sim import firmware
from device_sim.commands import Rejection
from device_sim.device import SimDevice
from device_sim.fleet import Fleet
from device_sim.records import Profile
from hub import wire
from hub.appraisal.messages import Command
from hub.appraisal.operations import Enrolment, publish_once, revoke, set_quarantine
from hub.broker.process import MosquittoProcess
from hub.config import Settings, load_settings
from hub.crypto.hubstate import open_store
from hub.crypto.keys import public_pem
from hub.server.localhub import LocalHub, enrol_all, prepare_state
from hub.store import Store

pytestmark = pytest.mark.broker
SEED = "security-broker"
A, B, F = "smart-meter-0001", "smart-meter-0002", "env-sensor-0001"
WAIT = 15.0


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Attacker:
    """A raw MQTT v5 client that publishes whatever it likes (the dev broker has no ACLs)."""

    def __init__(self, broker: MosquittoProcess, name: str = "attacker") -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                content_type: str | None = wire.FIRMWARE_MEDIA_TYPE) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if content_type:
            props.ContentType = content_type
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=props)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Live:
    broker: MosquittoProcess
    settings: Settings
    hub: LocalHub
    fleet: Fleet
    store: Store
    devices: dict[str, SimDevice]
    attacker: Attacker

    def verdicts(self, device_id: str) -> list[dict[str, Any]]:
        with self.store.reading() as conn:
            return list(reversed(self.store.verdict_history(conn, device_id, limit=1000)))

    def status(self, device_id: str) -> str:
        with self.store.reading() as conn:
            return self.store.devices(conn, [device_id])[device_id].status

    def wait_verdicts(self, device_id: str, count: int) -> list[dict[str, Any]]:
        assert wait_until(lambda: len(self.verdicts(device_id)) >= count), self.verdicts(device_id)
        return self.verdicts(device_id)

    def nonce(self) -> bytes:
        epoch = self.fleet.epoch
        assert epoch is not None
        return epoch.nonce


@pytest.fixture
def live(broker: MosquittoProcess, tmp_path: Path) -> Iterator[Live]:
    settings = load_settings(None, environ={}, state_dir=tmp_path / "hub", broker_host=broker.host,
                             broker_port=broker.port, epoch_period_s=600.0)
    settings = prepare_state(settings)
    devices = {
        A: SimDevice(A, firmware.SMART_METER, seed=SEED),
        B: SimDevice(B, firmware.SMART_METER, seed=SEED),
        F: SimDevice(F, firmware.ENV_SENSOR, Profile.FORGED, seed=SEED),
    }
    enrol_all(settings, [Enrolment(d.device_id, d.device_class, d.public_key_pem.decode(), d.ueid)
                         for d in devices.values()])
    hub = LocalHub(settings).start()
    store = open_store(settings)
    fleet = Fleet(broker.host, broker.port, list(devices.values()),
                  public_pem(hub.workers[0].keys.public_key).encode(), connections=3)
    attacker = Attacker(broker)
    try:
        fleet.start()
        assert fleet.wait_for_epoch(WAIT) is not None
        yield Live(broker, settings, hub, fleet, store, devices, attacker)
    finally:
        attacker.close()
        fleet.stop()
        hub.stop()
        store.close()
    assert hub.errors == []


def problems(verdict: dict[str, Any]) -> str:
    return " ".join(json.loads(verdict["problems"]))


def first_round(live: Live) -> None:
    live.fleet.publish_round()
    for device_id in (A, B):
        assert live.wait_verdicts(device_id, 1)[0]["status"] == "affirming"
    live.wait_verdicts(F, 1)


def test_impersonation_on_another_devices_topic(live: Live) -> None:
    """A's genuine, fresh evidence published on B's topic is rejected; B's status does not move."""
    first_round(live)
    raw = live.devices[A].make_evidence(live.nonce())
    live.attacker.publish(wire.device_topic(B, wire.EVIDENCE), raw)
    verdict = live.wait_verdicts(B, 2)[-1]
    assert verdict["status"] == "rejected" and "kid-mismatch" in problems(verdict)
    assert live.status(B) == "trusted" and len(live.verdicts(A)) == 1


def test_forged_evidence_rejected_and_cannot_quarantine(live: Live) -> None:
    first_round(live)
    verdict = live.verdicts(F)[0]
    assert verdict["status"] == "rejected" and not verdict["authenticated"] and "bad-signature" in problems(verdict)
    assert live.status(F) == "enrolled" and not live.devices[F].quarantined


def test_malformed_and_oversized_messages_do_not_stop_the_worker(live: Live) -> None:
    topic = wire.device_topic(A, wire.EVIDENCE)
    live.attacker.publish(topic, b"\xd2\x84\x43\xa1\x01\x26garbage")
    live.attacker.publish(topic, b"\xd2" * 40_000)  # over the hub's 16 KiB evidence limit
    live.attacker.publish(topic, b"x", content_type="application/unknown")
    assert [v["status"] for v in live.wait_verdicts(A, 3)] == ["rejected"] * 3
    big = Attacker(live.broker, "attacker-big")  # over the broker's packet limit: dropped or disconnected
    try:
        big.client.publish(topic, b"\x00" * 70_000, qos=1)
    finally:
        big.close()
    live.fleet.publish_round()
    verdicts = live.wait_verdicts(A, 4)
    assert verdicts[-1]["status"] == "affirming" and live.status(A) == "trusted"
    # processed is counted after the batch's results are acknowledged, which is after its verdicts are visible
    assert wait_until(lambda: live.hub.workers[0].health.processed >= 5) and live.hub.errors == []


def test_replayed_evidence_bytes_give_no_second_verdict(live: Live) -> None:
    raw = live.devices[A].make_evidence(live.nonce())
    topic = wire.device_topic(A, wire.EVIDENCE)
    live.attacker.publish(topic, raw)
    live.wait_verdicts(A, 1)
    live.attacker.publish(topic, raw)
    live.attacker.publish(topic, raw)
    live.fleet.publish_round()  # honest evidence after the replays: once it is judged, they were too
    verdicts = live.wait_verdicts(A, 2)
    assert [v["status"] for v in verdicts] == ["affirming", "affirming"]  # the three copies: one verdict
    assert len({v["dedup_key"] for v in verdicts}) == 2


def test_revoked_device_with_a_live_session_is_rejected(live: Live) -> None:
    first_round(live)
    revoke(live.store, A, "stolen", actor="test")
    live.fleet.publish_round()  # A is still connected and publishing
    verdict = live.wait_verdicts(A, 2)[-1]
    assert verdict["status"] == "rejected" and "revoked" in problems(verdict)
    assert live.status(A) == "revoked"
    assert live.wait_verdicts(B, 2)[-1]["status"] == "affirming"


def _outcomes(device: SimDevice, count: int) -> list[Any]:
    assert wait_until(lambda: len(device.command_log) >= count), device.command_log
    return list(device.command_log)


def test_forged_and_replayed_commands_are_ignored_by_the_device(live: Live) -> None:
    device = live.devices[A]
    hub_kid = live.hub.workers[0].keys.kid
    cmd_topic = wire.device_topic(A, wire.COMMAND)
    now = int(time.time())
    # 1. a quarantine signed by an attacker's key that claims the hub's kid
    rogue = ec.generate_private_key(ec.SECP256R1())
    forged = Command(A, wire.COMMAND_QUARANTINE, 1000, now, now + 3600, "forged").sign(rogue, hub_kid)
    live.attacker.publish(cmd_topic, forged, retain=True, content_type=None)
    outcome = _outcomes(device, 1)[-1]
    assert not outcome.accepted and outcome.rejection is Rejection.FORGED and not device.quarantined
    # 2. a genuine command for B, replayed on A's topic
    keys = live.hub.workers[0].keys
    for_b = Command(B, wire.COMMAND_QUARANTINE, 1, now, now + 3600, "for B").sign(keys.signing_key, keys.kid)
    live.attacker.publish(cmd_topic, for_b, retain=True, content_type=None)
    outcome = _outcomes(device, 2)[-1]
    assert outcome.rejection is Rejection.MISADDRESSED and not device.quarantined
    # 3. a genuine quarantine, then a release; the captured quarantine replayed afterwards
    quarantine = set_quarantine(live.store, keys, A, True, "investigate", ttl_s=3600, actor="test")
    publish_once(live.settings, [quarantine], "operator-cli")
    assert wait_until(lambda: device.quarantined)
    release = set_quarantine(live.store, keys, A, False, "cleared", ttl_s=3600, actor="test")
    publish_once(live.settings, [release], "operator-cli")
    assert wait_until(lambda: not device.quarantined)
    count = len(device.command_log)
    live.attacker.publish(cmd_topic, quarantine.payload, retain=True, content_type=None)
    outcome = _outcomes(device, count + 1)[-1]
    assert outcome.rejection is Rejection.REPLAYED and not device.quarantined
