"""The hub or the broker freezes under a steady stream, then resumes: recovery within 3 x the freeze + 5 s.

* the hub's processes stopped (SIGSTOP) for 20 s and continued (SIGCONT): the broker queued the
  fleet's evidence for the hub's persistent session meanwhile, and the devices re-sent what lacked a
  receipt; the hub catches up on the backlog;
* the broker stopped for 15 s and started again: the hub's results of the batch in flight wait for the
  broker (paho re-sends them on the resumed session), the batch is acknowledged once they are through,
  and it is never decided a second time (evidence the broker redelivers after the hub committed it is
  acknowledged without a decision; the worker counts it).

The broker here saves its database every second (``autosave_on_changes false``) rather than after every
change as dev.conf does. With per-change saving, every message into a broker that holds a backlog
rewrites the whole backlog: after these freezes the broker then takes in fewer messages per second than
the fleet's evidence and re-sends add, and the backlog grows whatever the hub does (measured with this
hub and the previous one; docs/RELIABILITY.md). That is a broker durability setting, not a hub fault; the
broker fault tests keep dev.conf.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.broker.process import BROKER_CONFIG_DIR, MosquittoProcess
from hub.server.localhub import LocalHub
from tests.e2e import make_env
from tests.faults.rig import DEVICES, FAST_HUB, MIX, FaultReport, FaultRun, HubProcess, make_fleet

pytestmark = [pytest.mark.broker, pytest.mark.slow]

HUB_FREEZE_S = 20.0
BROKER_FREEZE_S = 15.0


def _budget(freeze_s: float) -> float:
    return 3 * freeze_s + 5


@pytest.fixture
def interval_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    template = tmp_path / "interval-save.conf"
    text = (BROKER_CONFIG_DIR / "dev.conf").read_text(encoding="utf-8")
    assert "autosave_on_changes true" in text
    template.write_text(text.replace("autosave_on_changes true", "autosave_on_changes false"), encoding="utf-8")
    with MosquittoProcess(template, tmp_path / "broker") as broker:
        yield broker


@pytest.fixture
def freeze_run(request: pytest.FixtureRequest, interval_broker: MosquittoProcess, tmp_path: Path,
               fault_reports: list[FaultReport]) -> Iterator[FaultRun]:
    env = make_env(interval_broker, tmp_path, DEVICES, MIX, **FAST_HUB)
    run = FaultRun(request.node.name.removeprefix("test_"), env, [make_fleet(env, env.devices)], fault_reports)
    try:
        yield run
    finally:
        run.close()


def test_hub_frozen_and_continued(freeze_run: FaultRun) -> None:
    run = freeze_run
    hub = HubProcess(run.env, workers=1).start()
    try:
        run.begin()
        assert hub.proc is not None
        os.killpg(hub.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(HUB_FREEZE_S)  # devices keep signing (and re-sending) evidence meanwhile
        finally:
            os.killpg(hub.proc.pid, signal.SIGCONT)
        recovery = run.recover(timeout=_budget(HUB_FREEZE_S))
        run.finish(recovery, notes=f"SIGSTOP {HUB_FREEZE_S:.0f} s; budget {_budget(HUB_FREEZE_S):.0f} s")
        assert recovery <= _budget(HUB_FREEZE_S)
    finally:
        hub.stop()


def test_broker_stopped_and_started(freeze_run: FaultRun, interval_broker: MosquittoProcess) -> None:
    run = freeze_run
    with LocalHub(run.env.settings) as hub:
        run.begin()
        interval_broker.stop()
        time.sleep(BROKER_FREEZE_S)
        interval_broker.start()
        recovery = run.recover(timeout=_budget(BROKER_FREEZE_S))
        worker = hub.workers[0]
        run.finish(recovery, notes=f"broker down {BROKER_FREEZE_S:.0f} s; budget {_budget(BROKER_FREEZE_S):.0f} s; "
                                   f"{worker.redelivered} redelivered, not decided again")
        assert recovery <= _budget(BROKER_FREEZE_S)
