"""PSA tokens through a real Mosquitto: hub workers, the simulator's PSA platforms, results and commands."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from device_sim.device import SimDevice
from device_sim.fleet import Fleet
from device_sim.psa import PsaProfile, PsaSimDevice, build_psa_fleet
from hub import wire
from hub.appraisal.operations import Enrolment
from hub.broker.process import MosquittoProcess
from hub.config import load_settings
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import open_store
from hub.crypto.keys import public_pem
from hub.reference.trust import Tier
from hub.server.localhub import LocalHub, enrol_all, prepare_state
from tests.e2e import Observer, signed_payload

pytestmark = pytest.mark.broker

MIX = "honest:2,forged:1,debug:1,tampered:1,wrong-nonce:1"


def test_each_psa_profile_gets_its_verdict_and_action(broker: MosquittoProcess, tmp_path: Path) -> None:
    settings = prepare_state(load_settings(None, environ={}, state_dir=tmp_path / "hub", broker_host=broker.host,
                                           broker_port=broker.port))
    keys = load_hub_keys(settings)
    psa_devices = build_psa_fleet(6, MIX, seed="e2e-psa")
    devices: list[SimDevice] = list(psa_devices)
    enrol_all(settings, [Enrolment(d.device_id, d.device_class, d.public_key_pem.decode(), d.ueid) for d in devices])
    observer = Observer(broker.host, broker.port, ("fleet/+/result", "fleet/+/cmd")).start()
    hub_key = public_pem(keys.public_key).encode()
    by_profile: dict[PsaProfile, list[PsaSimDevice]] = {}
    for device in psa_devices:
        by_profile.setdefault(device.psa_profile, []).append(device)
    bad = by_profile[PsaProfile.DEBUG] + by_profile[PsaProfile.TAMPERED]
    with LocalHub(settings), Fleet(broker.host, broker.port, devices, hub_key) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        for _ in range(3):
            fleet.publish_round()
            time.sleep(0.3)
        assert fleet.flush(10)
        assert observer.wait(lambda: all(observer.on(wire.device_topic(d.device_id, wire.RESULT)) for d in devices))
        assert fleet.wait_for(lambda: all(d.quarantined for d in bad), 10)
    observer.stop()

    store = open_store(settings)
    try:
        with store.reading() as conn:
            records = {r.device_id: r for r in store.list_devices(conn)}
            audit = [r for r in store.audit_rows(conn) if r["action"] == "annotations"]
    finally:
        store.close()
    for device in psa_devices:
        results = [signed_payload(m.payload, keys)
                   for m in observer.on(wire.device_topic(device.device_id, wire.RESULT))]
        # A PSA token repeats within an epoch (same nonce, same claims): the hub treats a repeat as a duplicate
        # and re-sends the device's state command, so commands are counted by sequence number.
        commands = sorted({(c[wire.CMD_TYPE], c[wire.CMD_SEQ]) for c in (
            signed_payload(m.payload, keys) for m in observer.on(wire.device_topic(device.device_id, wire.COMMAND)))})
        statuses = {r[wire.SUBMODS]["psa"][wire.EAR_STATUS] for r in results}
        problems = " ".join(p for r in results for p in r[wire.RES_PROBLEMS])
        record = records[device.device_id]
        profile = device.psa_profile
        if profile is PsaProfile.HONEST:
            assert statuses == {Tier.AFFIRMING}, problems
            assert commands == [] and record.status == "trusted" and record.firmware_version == "1.2.0"
            assert not device.quarantined
        elif profile in (PsaProfile.DEBUG, PsaProfile.TAMPERED):
            assert statuses == {Tier.CONTRAINDICATED}
            assert commands == [("quarantine", 1)] and record.status == "quarantined"
            assert ("not secured" if profile is PsaProfile.DEBUG else "in no manifest") in problems
        else:  # forged key or a nonce the hub never issued: rejected, the device does not move
            assert statuses == {Tier.CONTRAINDICATED}
            assert all(r[wire.RES_ACTION] == "none" for r in results)
            assert ("bad-signature" if profile is PsaProfile.FORGED else "bad-nonce") in problems
            assert commands == [] and record.status == "enrolled" and not device.quarantined
    notes = [json.loads(r["detail"]) for r in audit]
    honest_ids = {d.device_id for d in by_profile[PsaProfile.HONEST]}
    assert honest_ids <= {r["device_id"] for r in audit}
    assert all(n["psa.verification_service"] and n["psa.certification_reference"] == "1234567890123-12345"
               for n in notes)


def test_psa_and_firmware_devices_share_one_fleet(broker: MosquittoProcess, tmp_path: Path) -> None:
    from device_sim.profiles import build_fleet

    settings = prepare_state(load_settings(None, environ={}, state_dir=tmp_path / "hub", broker_host=broker.host,
                                           broker_port=broker.port))
    keys = load_hub_keys(settings)
    devices: list[SimDevice] = [*build_fleet(2, "honest:1", seed="mixed"), *build_psa_fleet(1, seed="mixed")]
    enrol_all(settings, [Enrolment(d.device_id, d.device_class, d.public_key_pem.decode(), d.ueid) for d in devices])
    observer = Observer(broker.host, broker.port, ("fleet/+/result",)).start()
    with LocalHub(settings), Fleet(broker.host, broker.port, devices, public_pem(keys.public_key).encode()) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        fleet.publish_round()
        assert fleet.flush(10)
        assert observer.wait(lambda: all(observer.on(wire.device_topic(d.device_id, wire.RESULT)) for d in devices))
    observer.stop()
    schemes = {d.device_id: next(iter(signed_payload(observer.on(wire.device_topic(d.device_id, wire.RESULT))[0]
                                                      .payload, keys)[wire.SUBMODS])) for d in devices}
    assert schemes == {"env-sensor-0001": "firmware", "smart-meter-0001": "firmware", "psa-sensor-0001": "psa"}
