"""The hub's clock is stepped forward and back by ten minutes; one device is cut off from the broker.

Clock: the hub's wall clock (``Pipeline.clock``, what verdicts, the rate limiter and
trust-anchor validity read) is stepped +10 min, -10 min, +0 while evidence streams in.
Nonces count epochs and deadlines count epochs, so no verdict may change; the stored
receive times prove the clock really moved. (libfaketime on the hub process was tried:
with Python 3.11 it breaks ``time.sleep``, whose clock_nanosleep it intercepts.)
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from device_sim.records import Profile
from hub.crypto.hubstate import open_store
from hub.server.localhub import LocalHub
from hub.store.db import VERDICTS
from tests.faults.proxy import PartitionProxy
from tests.faults.rig import INTERVAL_S, FaultRun, make_fleet, verdict_counts, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

STEPS_S = (600.0, -600.0, 0.0)


def test_hub_clock_stepped_forward_and_back(run: FaultRun) -> None:
    offset = [0.0]
    with LocalHub(run.env.settings) as hub:
        for worker in hub.workers:
            worker.pipeline.clock = lambda: time.time() + offset[0]
        run.begin()
        for step in STEPS_S:
            offset[0] = step
            target = sum(verdict_counts(run.env).values()) + 3 * len(run.devices)

            def more(target: int = target) -> bool:
                return sum(verdict_counts(run.env).values()) >= target

            wait_until(more, 20, f"verdicts at {step:+.0f} s")
        recovery = run.recover()
        run.finish(recovery, notes="hub clock +10 min, -10 min, +0")
    store = open_store(run.env.settings)
    try:
        with store.reading() as conn:
            rows = conn.execute(select(VERDICTS.c.device_id, VERDICTS.c.status, VERDICTS.c.received_at)).all()
    finally:
        store.close()
    now = time.time()
    skews = [r.received_at - now for r in rows]
    assert max(skews) > 300 and min(skews) < -300, "the hub's clock did not move"
    honest = {d.device_id for d in run.devices if d.profile is Profile.HONEST}
    assert {r.status for r in rows if r.device_id in honest} == {"affirming"}, "a clock step changed a verdict"


def test_device_partitioned_from_the_broker(run: FaultRun) -> None:
    """One device's connection runs through a proxy that is cut for a while, then restored: it
    reconnects, gets its retained results and commands, and re-sends what lacks a receipt."""
    env = run.env
    cut_off = [d for d in env.devices if d.profile is Profile.TAMPERED] + [env.devices[0]]
    others = [d for d in env.devices if d not in cut_off]
    with PartitionProxy(env.broker.host, env.broker.port) as proxy, LocalHub(env.settings):
        run.close()
        partitioned = make_fleet(env, cut_off, proxy.port, prefix="fault-partitioned", connections=1, keepalive=2)
        run.fleets = [make_fleet(env, others, prefix="fault-direct"), partitioned]
        run.devices = [d for f in run.fleets for d in f.devices]
        run.begin()
        proxy.cut()
        published = sum(len(d.evidence_log) for d in cut_off)
        wait_until(lambda: sum(len(d.evidence_log) for d in cut_off) >= published + 8, 10,
                   "evidence signed while partitioned")
        time.sleep(INTERVAL_S)
        proxy.restore()
        recovery = run.recover()
        run.finish(recovery, notes=f"proxy cut ~{8 / len(cut_off) * INTERVAL_S:.1f} s, {proxy.connections} connections")
