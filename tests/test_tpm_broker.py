"""TPM quotes through a real Mosquitto: swtpm-backed gateways, hub workers, verdicts, commands and reboots."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device_sim.device import SimDevice
from device_sim.fleet import Fleet
from hub import wire
from hub.appraisal.operations import Enrolment
from hub.broker.process import MosquittoProcess
from hub.config import Settings, load_settings
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import open_store
from hub.crypto.keys import public_pem
from hub.server.localhub import LocalHub, enrol_all, prepare_state
from hub.store.db import DeviceRecord
from tests.e2e import Observer, signed_payload

if shutil.which("swtpm") is None:
    pytest.fail("swtpm is not installed: the TPM tests need Debian's swtpm and swtpm-tools (make setup)", pytrace=False)
try:
    from device_sim.tpm import TpmProfile, TpmSimDevice, build_tpm_fleet
except ImportError as exc:
    pytest.fail(f"tpm2-pytss is not importable ({exc}): pip install -e '.[tpm]' (make setup)", pytrace=False)

pytestmark = [pytest.mark.tpm, pytest.mark.broker]

PROFILES = (TpmProfile.HONEST, TpmProfile.TAMPERED, TpmProfile.REPLAY, TpmProfile.UNENROLLED_AK,
            TpmProfile.PCR_MISMATCH)


@pytest.fixture
def gateways() -> Iterator[list[TpmSimDevice]]:
    devices = build_tpm_fleet(PROFILES, seed="e2e-tpm")
    try:
        yield devices
    finally:
        for device in devices:
            device.close()


def _settings(broker: MosquittoProcess, tmp_path: Path, devices: list[TpmSimDevice]) -> Settings:
    settings = prepare_state(load_settings(None, environ={}, state_dir=tmp_path / "hub", broker_host=broker.host,
                                           broker_port=broker.port))
    enrol_all(settings, [Enrolment(d.device_id, d.device_class, d.public_key_pem.decode(), d.ueid) for d in devices])
    return settings


def _state(settings: Settings) -> tuple[dict[str, DeviceRecord], dict[str, list[dict[str, Any]]], list[Any]]:
    store = open_store(settings)
    try:
        with store.reading() as conn:
            records = {r.device_id: r for r in store.list_devices(conn)}
            history = {d: store.verdict_history(conn, d, limit=1000) for d in records}
            reboots = [r for r in store.audit_rows(conn) if r["action"] == "reboot"]
    finally:
        store.close()
    return records, history, reboots


def test_each_tpm_profile_gets_its_verdict_and_action(broker: MosquittoProcess, tmp_path: Path,
                                                      gateways: list[TpmSimDevice]) -> None:
    settings = _settings(broker, tmp_path, gateways)
    keys = load_hub_keys(settings)
    by_profile = {d.tpm_profile: d for d in gateways}
    honest, tampered = by_profile[TpmProfile.HONEST], by_profile[TpmProfile.TAMPERED]
    replay = by_profile[TpmProfile.REPLAY]
    devices: list[SimDevice] = list(gateways)
    observer = Observer(broker.host, broker.port, ("fleet/+/result", "fleet/+/cmd")).start()
    with LocalHub(settings), Fleet(broker.host, broker.port, devices, public_pem(keys.public_key).encode()) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        for _ in range(4):  # the replay gateway sends its withheld quote in the third round
            fleet.publish_round()
            time.sleep(0.2)
        assert fleet.flush(10)
        assert fleet.wait_for(lambda: tampered.quarantined, 15), "the tampered gateway got no quarantine command"
        assert fleet.wait_for(lambda: sum(len(v) for v in _state(settings)[1].values()) >= 4 * len(devices) + 1, 15)
    observer.stop()

    records, history, _ = _state(settings)
    statuses = {d.device_id: [v["status"] for v in history[d.device_id]] for d in gateways}
    problems = {d.device_id: " ".join(p for v in history[d.device_id] for p in json.loads(v["problems"]))
                for d in gateways}
    # honest: affirmed, trusted, running the release whose measured boot the PCR shows
    assert set(statuses[honest.device_id]) == {"affirming"}
    assert records[honest.device_id].status == "trusted" and records[honest.device_id].firmware_version == "1.2.0"
    assert not honest.quarantined
    # tampered: contraindicated, quarantined by a signed command the gateway verified and obeyed
    assert "contraindicated" in statuses[tampered.device_id] and "matches no release" in problems[tampered.device_id]
    assert records[tampered.device_id].status == "quarantined"
    commands = [signed_payload(m.payload, keys) for m in observer.on(wire.device_topic(tampered.device_id,
                                                                                       wire.COMMAND))]
    assert [c[wire.CMD_TYPE] for c in commands][:1] == [wire.COMMAND_QUARANTINE]
    # replay: its fresh quotes are affirmed, the withheld older quote is rejected as a replay
    assert statuses[replay.device_id].count("rejected") == 1 and "replay" in problems[replay.device_id]
    assert records[replay.device_id].status == "trusted" and not replay.quarantined
    # unenrolled AK and a PCR list that does not hash to the quoted digest: rejected, the device does not move
    for profile, reason in ((TpmProfile.UNENROLLED_AK, "bad-signature"), (TpmProfile.PCR_MISMATCH,
                                                                           "pcr-digest-mismatch")):
        device = by_profile[profile]
        assert set(statuses[device.device_id]) == {"rejected"} and reason in problems[device.device_id]
        assert records[device.device_id].status == "enrolled" and not device.quarantined
    results = observer.on(wire.device_topic(honest.device_id, wire.RESULT))
    assert results and next(iter(signed_payload(results[-1].payload, keys)[wire.SUBMODS])) == "tpm"


def test_a_tpm_reset_and_a_restart_between_quotes_are_recorded_as_reboots(
        broker: MosquittoProcess, tmp_path: Path) -> None:
    with TpmSimDevice("edge-gateway-0001", seed="e2e-tpm-reboot") as gateway:
        settings = _settings(broker, tmp_path, [gateway])
        keys = load_hub_keys(settings)

        def verdicts() -> int:
            return len(_state(settings)[1][gateway.device_id])

        with LocalHub(settings), Fleet(broker.host, broker.port, [gateway],
                                       public_pem(keys.public_key).encode()) as fleet:
            assert fleet.wait_for_epoch(10) is not None
            for expected, step in enumerate((lambda: None, gateway.reboot, gateway.tpm_restart), start=1):
                step()
                assert fleet.publish_device(gateway.device_id) == 1
                assert fleet.wait_for(lambda n=expected: verdicts() >= n, 15)  # type: ignore[misc]
        records, history, reboots = _state(settings)
    record = records[gateway.device_id]
    assert [v["status"] for v in history[gateway.device_id]] == ["affirming"] * 3
    assert record.reboots == 2 and record.status == "trusted"
    moves = [json.loads(r["detail"]) for r in reboots]
    assert moves[0]["to"] == moves[0]["from"] + (1 << 32) - (moves[0]["from"] & 0xFFFFFFFF)  # resetCount + 1
    assert moves[1]["to"] == moves[1]["from"] + 1  # restartCount + 1
