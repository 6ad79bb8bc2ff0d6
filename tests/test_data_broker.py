"""Data-integrity evidence through a real Mosquitto: each data profile's verdict, action, and what a
consumer subscribed to ``fleet/+/verified-data`` receives.

The consumer must get everything an honest device sent, in order, and nothing tampered, late,
or from a quarantined device. Expectations are computed from what each simulated device
actually did (its ``data_log``), never from timing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest

from device_sim.data_profiles import DataKind, DataProfile
from device_sim.device import SimDevice
from device_sim.fleet import Fleet
from hub import wire
from hub.appraisal.operations import publish_once, set_quarantine
from hub.broker.process import MosquittoProcess
from hub.server.localhub import LocalHub
from tests.e2e import HubEnv, Observer, make_env

pytestmark = pytest.mark.broker

MIX = "honest:2,data-mitm:1,data-drop:1,data-replay:1,data-reorder:1,data-restart:1,data-ignores-quarantine:1"
ROUNDS = 7


def _rounds(fleet: Fleet, count: int, pause: float = 0.3) -> None:
    for _ in range(count):
        fleet.publish_round()
        time.sleep(pause)
    assert fleet.flush(10)


def _verdict_rows(device: SimDevice) -> int:
    """Data verdict rows the hub must write for what the device sent (a replayed copy is a duplicate)."""
    return sum(1 for d in device.data_log if d.kind in (DataKind.BATCH, DataKind.LATE, DataKind.INTERCEPTED))


def _data_verdicts(env: HubEnv, device_id: str) -> list[dict[str, Any]]:
    return list(reversed([v for v in env.verdicts(device_id) if v["scheme"] == "data"]))


def _consumed(observer: Observer, device_id: str) -> list[dict[str, Any]]:
    return [cbor2.loads(m.payload) for m in observer.on(wire.device_topic(device_id, wire.VERIFIED_DATA))]


def _genuine(device: SimDevice, seq: int) -> list[list[object]]:
    batch = next(d.batch for d in device.data_log if d.batch.seq == seq and d.kind is not DataKind.REPLAYED)
    return [list(r) for r in batch.records]


def test_each_data_profile_gets_its_verdict_action_and_consumer_view(broker: MosquittoProcess,
                                                                      tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 8, MIX)
    by_profile = {d.data_profile: d for d in env.devices}
    honest = [d for d in env.devices if d.data_profile is DataProfile.HONEST]
    observer = Observer(broker.host, broker.port, ("fleet/+/verified-data",)).start()
    try:
        with LocalHub(env.settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem,
                                           data=True) as fleet:
            assert fleet.wait_for_epoch(10) is not None
            _rounds(fleet, ROUNDS)
            assert observer.wait(lambda: all(len(_data_verdicts(env, d.device_id)) == _verdict_rows(d)
                                             for d in env.devices), 30)
        time.sleep(0.2)  # let the last verified-data messages in flight reach the observer
    finally:
        observer.stop()

    def seqs(device: SimDevice) -> list[int]:
        return [m["seq"] for m in _consumed(observer, device.device_id)]

    def statuses(device: SimDevice) -> list[tuple[str, str, str]]:
        return [(v["status"], v["action"], ";".join(p.split(":")[0] for p in json.loads(v["problems"])))
                for v in _data_verdicts(env, device.device_id)]

    # honest: everything, in order, affirming, records exactly as the device signed them
    for device in honest:
        assert seqs(device) == list(range(1, ROUNDS + 1))
        for message in _consumed(observer, device.device_id):
            assert message["verdict"] == "affirming" and message["records"] == _genuine(device, message["seq"])
        assert {s[:2] for s in statuses(device)} == {("affirming", "affirm")}
        assert env.device_status(device.device_id) == "trusted"

    # mitm: altered copies rejected (unauthenticated, cannot quarantine), never republished
    mitm = by_profile[DataProfile.MITM]
    intercepted = {d.batch.seq for d in mitm.data_log if d.kind is DataKind.INTERCEPTED}
    assert intercepted == {2, 5}
    assert seqs(mitm) == [s for s in range(1, ROUNDS + 1) if s not in intercepted]
    for message in _consumed(observer, mitm.device_id):
        assert message["records"] == _genuine(mitm, message["seq"])
    rows = statuses(mitm)
    assert [r for r in rows if r[0] == "rejected"] == [("rejected", "none", "records-tampered")] * 2
    assert [r for r in rows if r[0] == "warning"] == [("warning", "warn", "data-gap")] * 2
    assert env.device_status(mitm.device_id) != "quarantined" and not mitm.quarantined

    # drop: a gap is a warning; the batches after it still reach the consumer, in order
    drop = by_profile[DataProfile.DROP]
    assert seqs(drop) == [s for s in range(1, ROUNDS + 1) if s != 3]
    assert ("warning", "warn", "data-gap") in statuses(drop) and env.device_status(drop.device_id) != "quarantined"

    # replay: the replayed copy is a duplicate: no second verdict, republished once
    replay = by_profile[DataProfile.REPLAY]
    assert any(d.kind is DataKind.REPLAYED for d in replay.data_log)
    assert seqs(replay) == list(range(1, ROUNDS + 1))
    assert len(statuses(replay)) == ROUNDS and {s[0] for s in statuses(replay)} == {"affirming"}

    # reorder: batch 4 is a gap (republished), batch 3 arrives late (a warning, never republished)
    reorder = by_profile[DataProfile.REORDER]
    assert seqs(reorder) == [s for s in range(1, ROUNDS + 1) if s != 3]
    assert ("warning", "warn", "data-late") in statuses(reorder)
    assert ("warning", "warn", "data-gap") in statuses(reorder)

    # restart without a reboot: contraindicated and quarantined; the device obeys (stops sending data)
    restart = by_profile[DataProfile.RESTART]
    assert seqs(restart) == [1, 2, 3]
    assert ("contraindicated", "quarantine", "chain-restart") in statuses(restart)
    assert any(c.accepted and c.command_type == wire.COMMAND_QUARANTINE for c in restart.command_log)
    # (the default policy releases an automatic quarantine at the next affirming firmware verdict)

    # ignores quarantine: quarantined for its firmware, keeps sending data, none of it reaches the consumer
    rogue = by_profile[DataProfile.IGNORES_QUARANTINE]
    assert rogue.quarantined and seqs(rogue) == []
    assert sum(1 for d in rogue.data_log if d.kind is DataKind.BATCH) == ROUNDS
    assert {s[0] for s in statuses(rogue)} == {"contraindicated"}
    assert env.device_status(rogue.device_id) == "quarantined"


def test_data_from_an_operator_quarantined_device_is_never_republished(broker: MosquittoProcess,
                                                                       tmp_path: Path) -> None:
    """Firmware affirming, chain in order: only the device's quarantined status keeps its data back."""
    env = make_env(broker, tmp_path, 2, "honest:1")
    target = env.devices[1]
    env.devices[1] = SimDevice(target.device_id, target.device_class, seed="e2e",
                               data_profile=DataProfile.IGNORES_QUARANTINE)
    target = env.devices[1]
    observer = Observer(broker.host, broker.port, ("fleet/+/verified-data",)).start()
    try:
        with LocalHub(env.settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem,
                                           data=True) as fleet:
            assert fleet.wait_for_epoch(10) is not None
            _rounds(fleet, 2)
            assert observer.wait(lambda: len(_consumed(observer, target.device_id)) == 2)
            store = env.store()
            try:
                command = set_quarantine(store, env.keys, target.device_id, True, "operator test", 3600)
            finally:
                store.close()
            publish_once(env.settings, [command], "operator-test")
            assert fleet.wait_for(lambda: target.quarantined, 10)
            _rounds(fleet, 3)
            assert observer.wait(lambda: len(_data_verdicts(env, target.device_id)) == _verdict_rows(target), 30)
            assert observer.wait(lambda: len(_consumed(observer, env.devices[0].device_id)) == 5)
    finally:
        observer.stop()
    assert [m["seq"] for m in _consumed(observer, target.device_id)] == [1, 2]
    later = _data_verdicts(env, target.device_id)[2:]
    assert len(later) == 3 and {v["action"] for v in later} == {"awaiting-operator-release"}
    assert env.device_status(target.device_id) == "quarantined"  # data never releases a device
