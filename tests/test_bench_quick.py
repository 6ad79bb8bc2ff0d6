"""The benchmark suite runs end to end (at tiny scale) and writes results of the documented shape.

Only the structure is checked: figures are reported by ``make bench``, never asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.hubproc import THREAD_ROLES
from bench.run import main

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]


def test_bench_writes_every_figure_for_both_stores(tmp_path: Path) -> None:
    assert main(["--tiny", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "latest.json").read_text())
    report = (tmp_path / "latest.md").read_text()
    assert report.startswith("# Benchmark results") and "## Whole hub, by thread" in report
    assert data["raw_verify_per_cpu_s"] > 0
    assert {"cpu", "cores", "memory_gb", "python", "loadavg_at_start"} <= set(data["machine"])
    assert set(data["summary"]) == {"sqlite", "postgresql"}
    for store, head in data["summary"].items():
        wanted = {"hub_verified_per_cpu_s", "efficiency", "throughput", "quarantine_latency_ms", "by_enrolled"}
        assert wanted <= set(head)
        assert [t["workers"] for t in head["throughput"]] == [1, 2]
        assert [row["enrolled_devices"] for row in head["by_enrolled"]] == [300, 600]
        for row in head["by_enrolled"]:
            assert len(row["rss_mb_per_worker"]) == 2 and all(mb > 0 for mb in row["rss_mb_per_worker"])
        for drain in data["databases"][store]["drain"]:
            assert drain["messages"] == 200, "every queued evidence got a verdict"
            assert drain["bad"] > 0 and drain["statuses"].get("rejected", 0) == drain["bad"]
            threads = drain["thread_cpu_s"]
            assert set(threads) == set(THREAD_ROLES)
            assert 0 < sum(threads.values()) <= drain["hub_cpu_s"] + 0.05  # 10 ms ticks: a tiny drain is coarse
        low = data["databases"][store]["low_rate"]
        assert set(low["thread_cpu_s"]) == set(THREAD_ROLES) and low["thread_cpu_s"]["evidence loop"] > 0
        header = next(line for line in report.splitlines() if line.startswith("| thread |"))
        assert f" {store}, drain |" in header and f" {store}, {low['rate']:.0f}/s |" in header
        for scale in data["databases"][store]["scale"]:
            assert scale["completed"] == scale["published"], "a result for every published evidence"
            assert scale["quarantined"] == scale["probes"] > 0, "every contraindicated probe was quarantined"
        assert set(data["target_verdicts"][store]) == set(data["targets"])
