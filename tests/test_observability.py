"""The worker's /metrics, /healthz and /readyz through a real broker and a simulated fleet."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from device_sim.fleet import Fleet
from hub.broker.process import MosquittoProcess, free_port
from hub.server.localhub import LocalHub
from tests.e2e import make_env

pytestmark = pytest.mark.broker


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_verdicts_and_health_follows_the_broker(broker: MosquittoProcess, tmp_path: Path) -> None:
    port = free_port()
    env = make_env(broker, tmp_path, 4, "honest:2,tampered:1,forged:1", metrics_port=port)
    base = f"http://127.0.0.1:{port}"
    with LocalHub(env.settings) as hub, Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        for _ in range(2):
            fleet.publish_round()
            time.sleep(0.3)
        assert fleet.wait_for(lambda: hub.workers[0].health.processed >= 8, 10)
        time.sleep(0.3)
        code, text = _get(f"{base}/metrics")
        assert code == 200
        assert _metric(text, "attest_verdicts_total", tier="affirming") == 4
        assert _metric(text, "attest_verdicts_total", tier="contraindicated", device_class="smart-meter") \
            + _metric(text, "attest_verdicts_total", tier="contraindicated", device_class="env-sensor") == 2
        assert _metric(text, "attest_evidence_rejected_total", reason="bad-signature") == 2
        assert _metric(text, "attest_quarantines_total") == 1
        assert _metric(text, "attest_time_to_quarantine_seconds_count") == 1
        assert _metric(text, "attest_broker_connected") == 1
        assert _get(f"{base}/healthz")[0] == 200
        code, body = _get(f"{base}/readyz")
        assert code == 200 and json.loads(body)["ready"] is True
        broker.stop()
        deadline = time.monotonic() + 10
        while _get(f"{base}/readyz")[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        code, body = _get(f"{base}/readyz")
        assert code == 503 and json.loads(body)["broker_connected"] is False
        assert _get(f"{base}/healthz")[0] == 200, "alive while waiting for the broker"
        broker.start()
        assert fleet.wait_for(lambda: _get(f"{base}/readyz")[0] == 200, 15)
        assert _get(f"{base}/nothing")[0] == 404
