"""The storage benchmark runs end to end (tiny scale) and writes every figure docs/RELIABILITY.md quotes.

Only the structure and the kind of each figure are checked (what is stored per kind, not how much time
it takes); the figures themselves are reported by ``python -m bench.storage``.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.storage import main


def test_storage_bench_writes_every_figure(tmp_path: Path) -> None:
    assert main(["--tiny", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "storage.json").read_text())
    assert (tmp_path / "storage.md").read_text().startswith("# Storage benchmark")
    kinds = data["per_kind"]
    assert set(kinds) == {"honest", "rejected_authenticated", "rejected_unauthenticated",
                          "rejected_unauthenticated_over_budget", "unknown_device"}
    assert kinds["honest"]["verdict_rows"] == kinds["honest"]["messages"] > 0
    assert kinds["unknown_device"]["verdict_rows"] == 0 and kinds["unknown_device"]["bytes"] == 0
    assert kinds["rejected_unauthenticated_over_budget"]["verdict_rows"] == 0
    # a row of 64 KiB garbage holds its hash, not its bytes
    assert kinds["rejected_unauthenticated"]["bytes_per_message"] < kinds["rejected_unauthenticated"]["message_bytes"]
    for hostile in ("hostile_garbage", "hostile_signed", "hostile_signed_large"):
        row = data[hostile]
        assert row["messages"] == int(20 * 60 * 0.5) and row["extrapolated_hour_mb"] >= 0
        if hostile == "hostile_garbage":  # unsigned: the per-minute budget, over at most two minutes of hub clock
            assert row["verdict_rows"] <= 20 * 2
        else:  # signed evidence is evidence: one verdict row each (bounded by the rejection-rate finding instead)
            assert row["verdict_rows"] == row["messages"]
