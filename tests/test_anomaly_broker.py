"""Slow attacks through a real broker: each is found by the leader's pass; an honest fleet raises nothing.

Time is compressed: devices report every 0.4 s and the leader runs a pass
every 0.5 s. The detector's windows are counted in reports and in the class's
own reporting interval, so these are its default thresholds.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from device_sim.device import SimDevice
from device_sim.fleet import Fleet
from device_sim.slow_attacks import SlowAttack, SlowAttackDriver, build_slow_attack_fleet
from hub.anomaly import stats as anomaly
from hub.anomaly.records import findings
from hub.appraisal.operations import Enrolment
from hub.broker.process import MosquittoProcess, free_port
from hub.config import Settings, load_settings
from hub.crypto.hubstate import open_store
from hub.crypto.keys import public_pem
from hub.server.localhub import LocalHub, enrol_all, prepare_state
from tests.e2e import test_database_url

pytestmark = [pytest.mark.broker, pytest.mark.slow]

INTERVAL = 0.4
RUN_S = 10.0
DEVICES = 24
ATTACKS = {SlowAttack.CREEPING_DELAY: 2, SlowAttack.RARE_RELEASE: 2, SlowAttack.BOOT_LOOP: 1}
EXPECTED_KIND = {SlowAttack.CREEPING_DELAY: anomaly.CADENCE, SlowAttack.RARE_RELEASE: anomaly.RARE,
                 SlowAttack.BOOT_LOOP: anomaly.BOOTS}


def _settings(broker: MosquittoProcess, tmp_path: Path, **overrides: Any) -> Settings:
    settings = load_settings(None, environ={}, state_dir=tmp_path / "hub", broker_host=broker.host,
                             broker_port=broker.port, anomaly_interval_s=0.5, anomaly_settle_s=0.3,
                             database_url=test_database_url(), **overrides)
    return prepare_state(settings)


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _run(broker: MosquittoProcess, settings: Settings, devices: list[SimDevice], plan: Mapping[str, SlowAttack],
         workers: int = 1) -> tuple[list[dict[str, Any]], str, list[int]]:
    """Run the fleet; returns every finding, the leader's metrics text and each worker's processed count."""
    enrol_all(settings, [Enrolment(d.device_id, d.device_class, d.public_key_pem.decode(), d.ueid) for d in devices])
    with LocalHub(settings, workers) as hub:
        key = public_pem(hub.workers[0].keys.public_key).encode()
        with Fleet(broker.host, broker.port, devices, key) as fleet:
            assert fleet.wait_for_epoch(10) is not None
            with SlowAttackDriver(fleet, plan, INTERVAL, seed="anomaly"):
                time.sleep(RUN_S)
            fleet.flush(5)
            time.sleep(1.5)  # a last pass over the settled verdicts
            text = _metrics(settings.metrics_port)
            processed = [w.health.processed for w in hub.workers]
    store = open_store(settings)
    try:
        with store.reading() as conn:
            return findings(conn, open_only=False), text, processed
    finally:
        store.close()


def test_each_slow_attack_is_found_and_explained(broker: MosquittoProcess, tmp_path: Path) -> None:
    devices, plan = build_slow_attack_fleet(DEVICES, ATTACKS, seed="anomaly")
    settings = _settings(broker, tmp_path, metrics_port=free_port())
    found, text, processed = _run(broker, settings, devices, plan, workers=2)
    assert all(processed), f"both workers took a share of the evidence: {processed}"
    by_device: dict[str, set[str]] = {}
    for f in found:
        by_device.setdefault(f["device_id"], set()).add(f["kind"])
    for device_id, attack in plan.items():
        assert EXPECTED_KIND[attack] in by_device.get(device_id, set()), (device_id, attack, found)
    assert set(by_device) <= set(plan), f"honest devices flagged: {set(by_device) - set(plan)}"
    late = next(f for f in found if f["kind"] == anomaly.CADENCE)
    assert "later than its own usual and than its class's" in late["explanation"]
    rare = next(f for f in found if f["kind"] == anomaly.RARE)
    assert "1.1.0" in rare["explanation"] and "approved but run by only 2 of" in rare["explanation"]
    assert all(f["score"] >= 1.0 or not f["is_open"] for f in found)

    store = open_store(settings)
    try:
        with store.reading() as conn:
            records = store.devices(conn, list(plan))
            audit = [r for r in store.audit_rows(conn) if r["actor"] == "anomaly-detector"]
    finally:
        store.close()
    held = [d for d in records.values() if d.anomaly_hold]
    assert held and all(d.status == "warning" for d in held), "policy 'warn': an open finding holds at warning"
    assert any(r["action"] == "status" and r["device_id"] in plan for r in audit)
    assert 'attest_anomaly_findings{kind="boot-rate"} 1.0' in text
    assert 'attest_devices{status="warning"}' in text


def test_an_honest_fleet_of_the_same_size_raises_nothing(broker: MosquittoProcess, tmp_path: Path) -> None:
    devices, plan = build_slow_attack_fleet(DEVICES, {}, seed="anomaly")
    assert plan == {}
    settings = _settings(broker, tmp_path, metrics_port=free_port())
    found, text, _ = _run(broker, settings, devices, plan, workers=2)
    assert found == []
    assert 'attest_devices{status="trusted"} 24.0' in text, "the leader fills devices-by-status"
    assert 'attest_anomaly_findings{kind="late-reports"} 0.0' in text
    store = open_store(settings)
    try:
        with store.reading() as conn:
            stats = conn.exec_driver_sql("SELECT count(*) FROM anomaly_stat").scalar_one()
    finally:
        store.close()
    assert stats == DEVICES, "the detector did watch every device"
