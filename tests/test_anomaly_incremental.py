"""The leader's pass keeps the detector state in memory: its findings equal a full recomputation's,
a pass with nothing new does no per-device work, and a failed pass reads the state afresh."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import HubEnv, build_env, incoming
from test_anomaly_pass import CLASS, CONFIG, LOOPER, Clock, rounds

from device_sim import firmware
from device_sim.device import SimDevice
from device_sim.records import Profile
from hub.anomaly import fleet as fleet_module
from hub.anomaly.records import findings
from hub.anomaly.watch import AnomalyWatch, PassResult
from hub.store import StoreError

OTHER = firmware.SMART_METER


def make_env(path: Path) -> HubEnv:
    path.mkdir()
    env = build_env(path)
    for i in range(1, 13):
        env.add_device(f"env-sensor-{i:04d}", CLASS)
    for i in range(1, 7):
        env.add_device(f"meter-{i:04d}", OTHER)
    return env


def settle(watch: AnomalyWatch, clock: Clock, tick: list[float]) -> list[PassResult]:
    """Two passes ``settle_s`` apart, so everything committed so far is read."""
    out = []
    for _ in range(2):
        out.append(watch.run_pass(clock.t + 2, tick=tick[0]))
        tick[0] += CONFIG.settle_s
    return out


def scenario(env: HubEnv, incremental: bool) -> list[tuple[object, ...]]:
    """A boot loop that opens and closes, forged signatures, quiet passes; the findings and devices after."""
    start = 1_800_000_000.0
    clock = Clock()
    clock.t = start
    pipeline = env.pipeline(clock=clock)
    watch = AnomalyWatch(env.store, env.keys, env.references, CONFIG, command_ttl_s=3600, incremental=incremental)
    tick = [0.0]
    rounds(env, pipeline, clock, 10)
    settle(watch, clock, tick)
    rounds(env, pipeline, clock, 8, reboot=LOOPER)
    settle(watch, clock, tick)
    settle(watch, clock, tick)  # nothing new
    victim = "env-sensor-0005"
    forger = SimDevice(victim, CLASS, Profile.FORGED, seed="security-tests")
    for _ in range(6):
        clock.t += 1
        pipeline.process([incoming(victim, forger.make_evidence(env.epoch_nonce))])
    settle(watch, clock, tick)
    rounds(env, pipeline, clock, CONFIG.window + 2)
    settle(watch, clock, tick)
    with env.store.reading() as conn:
        rows = findings(conn, open_only=False)
    out: list[tuple[object, ...]] = sorted(
        (r["device_id"], r["kind"], r["is_open"], r["score"], r["max_score"], r["closed_by"]) for r in rows)
    out += [(d, env.device(d).status, env.device(d).anomaly_hold) for d in sorted(env.devices)]
    return out


def test_incremental_findings_equal_a_full_recomputation(tmp_path: Path) -> None:
    results = []
    for incremental in (True, False):
        env = make_env(tmp_path / str(incremental))
        try:
            results.append(scenario(env, incremental))
        finally:
            env.close()
    incremental, full = results
    assert any(row[1] == "boot-rate" for row in full) and any(row[1] == "signature-failures" for row in full)
    assert incremental == full


def test_a_pass_with_nothing_new_does_no_per_device_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env(tmp_path / "env")
    loads: list[int] = []
    real = fleet_module.load_stats
    monkeypatch.setattr(fleet_module, "load_stats", lambda conn: loads.append(1) or real(conn))
    try:
        clock = Clock()
        pipeline = env.pipeline(clock=clock)
        watch = AnomalyWatch(env.store, env.keys, env.references, CONFIG, command_ttl_s=3600)
        tick = [0.0]
        rounds(env, pipeline, clock, 10)
        first = settle(watch, clock, tick)
        assert sum(r.processed for r in first) == 10 * 18 and first[-1].saved == 18
        quiet = settle(watch, clock, tick)
        assert [(r.processed, r.scored, r.saved) for r in quiet] == [(0, 0, 0), (0, 0, 0)]
        # New evidence of one class rescores that class only and writes back only its reporters' states.
        clock.t += 10
        pipeline.process([incoming(d, env.devices[d].make_evidence(env.epoch_nonce)) for d in ("meter-0001",)])
        (one, after) = settle(watch, clock, tick)
        assert (one.processed + after.processed, one.scored + after.scored, one.saved + after.saved) == (1, 6, 1)
        assert loads == [1], "the stored state is read once, at the first pass"
    finally:
        env.close()


def test_a_failed_pass_reads_the_state_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env(tmp_path / "env")
    try:
        clock = Clock()
        pipeline = env.pipeline(clock=clock)
        watch = AnomalyWatch(env.store, env.keys, env.references, CONFIG, command_ttl_s=3600)
        tick = [0.0]
        rounds(env, pipeline, clock, 10)
        settle(watch, clock, tick)
        rounds(env, pipeline, clock, 1)
        watch.run_pass(clock.t, tick=tick[0])
        tick[0] += CONFIG.settle_s

        def broken(*args: object) -> None:
            raise StoreError("disk full")

        with monkeypatch.context() as patch:
            patch.setattr("hub.anomaly.watch.save_stats", broken)
            with pytest.raises(StoreError):
                watch.run_pass(clock.t, tick=tick[0])
        assert watch._fleet is None, "the folded-in verdicts were not stored: memory is dropped"
        again = watch.run_pass(clock.t, tick=tick[0] + CONFIG.settle_s)
        assert again.processed == 18
        stored = env.store
        with stored.reading() as conn:
            state = fleet_module.load_stats(conn)["meter-0001"]
        assert state.outcomes == [0] * 11, "each verdict folded in once"
    finally:
        env.close()
