"""The broker fails under a steady stream: stopped (SIGTERM) and killed (SIGKILL), then restarted.

Mosquitto keeps the hub's persistent session and its queue across both (dev.conf saves
on every change); whatever a device published while the broker was gone, or what a
PUBACK covered but the broker never wrote, is re-sent by the device until its receipt
(the result naming it) arrives.
"""

from __future__ import annotations

import time

import pytest

from hub.broker.process import MosquittoProcess
from hub.server.localhub import LocalHub
from tests.faults.rig import FaultRun

pytestmark = [pytest.mark.broker, pytest.mark.slow]

OUTAGE_S = 1.5


@pytest.mark.parametrize("kill", [False, True], ids=["stopped", "killed"])
def test_broker_restarted(run: FaultRun, broker: MosquittoProcess, kill: bool) -> None:
    with LocalHub(run.env.settings):
        run.begin()
        if kill:
            broker.kill()
        else:
            broker.stop()
        time.sleep(OUTAGE_S)  # the outage itself; devices keep signing evidence meanwhile
        broker.start()
        recovery = run.recover()
        run.finish(recovery, notes="SIGKILL" if kill else "SIGTERM")
