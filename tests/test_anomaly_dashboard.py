"""docs/grafana-dashboard.json charts every metric the hub exports, and only metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hub.server.metrics import HubMetrics

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"
DOC = DASHBOARD.parent / "OBSERVABILITY.md"
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def _families() -> set[str]:
    return {metric.name for metric in HubMetrics("w0").registry.collect()}


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_every_expression_names_an_exported_metric_and_every_metric_is_charted() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used = {_base(name) for e in exprs for name in re.findall(r"\battest_[a-z_]+", e)}
    families = _families()
    assert used <= families, used - families
    assert families <= used, f"not charted: {families - used}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in dashboard["panels"])
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)


def test_the_observability_doc_lists_every_metric() -> None:
    text = DOC.read_text()
    missing = {name for name in _families() if name not in text}
    assert not missing, missing
