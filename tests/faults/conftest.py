"""Fixtures and the end-of-run report of the fault suite (the rig itself is in rig.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from hub.broker.process import MosquittoProcess
from tests.e2e import HubEnv, make_env
from tests.faults.rig import DEVICES, FAST_HUB, MIX, REPORT_KEY, FaultReport, FaultRun, make_fleet


def pytest_configure(config: pytest.Config) -> None:
    config.stash[REPORT_KEY] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    reports = config.stash.get(REPORT_KEY, [])
    if not reports:
        return
    terminalreporter.section("fault suite: evidence sent / verified / re-sent, recovery")
    for r in reports:
        terminalreporter.write_line(f"{r.fault:<34} sent {r.sent:4d}  verified {r.verified:4d}  "
                                    f"re-sent {r.resent:4d}  recovery {r.recovery_s:5.2f} s  {r.notes}")
    out = os.environ.get("ATTEST_HUB_FAULT_REPORT")
    if out:
        Path(out).write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n", encoding="utf-8")


@pytest.fixture
def fault_reports(request: pytest.FixtureRequest) -> list[FaultReport]:
    return request.config.stash[REPORT_KEY]


@pytest.fixture
def fault_env(broker: MosquittoProcess, tmp_path: Path) -> HubEnv:
    return make_env(broker, tmp_path, DEVICES, MIX, **FAST_HUB)


@pytest.fixture
def run(request: pytest.FixtureRequest, fault_env: HubEnv, fault_reports: list[FaultReport]) -> Iterator[FaultRun]:
    """A ``FaultRun`` over one fleet of the whole ``fault_env`` (two connections)."""
    name = request.node.name.removeprefix("test_")
    fault_run = FaultRun(name, fault_env, [make_fleet(fault_env, fault_env.devices)], fault_reports)
    try:
        yield fault_run
    finally:
        fault_run.close()


