"""The leader's pass on a real store fed by the real pipeline: findings, status by policy, closing, the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import HubEnv, build_env, incoming

from device_sim import firmware
from device_sim.device import SimDevice
from device_sim.records import Profile
from hub import wire
from hub.anomaly import stats as anomaly
from hub.anomaly.records import findings
from hub.anomaly.stats import DetectorConfig
from hub.anomaly.watch import AnomalyWatch, PassResult
from hub.appraisal.pipeline import Pipeline
from hub.cli.main import cli
from hub.server.localhub import DEMO_OPERATOR_KEY, MANIFESTS_DIR
from hub.server.metrics import HubMetrics
from hub.server.observe import export_anomalies as export

CLASS = firmware.ENV_SENSOR
LOOPER = "env-sensor-0003"
CONFIG = DetectorConfig(settle_s=1.0, window=12)


class Clock:
    def __init__(self) -> None:
        import time

        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def env(tmp_path: Path) -> Iterator[HubEnv]:
    hub = build_env(tmp_path)
    for i in range(1, 13):
        hub.add_device(f"env-sensor-{i:04d}", CLASS)
    try:
        yield hub
    finally:
        hub.close()


def set_policy(env: HubEnv, action: str) -> None:
    text = (MANIFESTS_DIR / CLASS / "policy.toml").read_text().replace("version = 1", "version = 2", 1)
    assert env.references.offer_policy(f'anomaly = "{action}"\n' + text) is not None
    assert env.references.policy(CLASS).anomaly == action


def rounds(env: HubEnv, pipeline: Pipeline, clock: Clock, count: int, *, reboot: str | None = None,
           interval: float = 10.0) -> None:
    """Every device reports once per round (one batch per round); ``reboot`` reboots before every other one."""
    for r in range(count):
        clock.t += interval
        batch = []
        for device_id, device in env.devices.items():
            if device_id == reboot and r % 2 == 1:
                device.reboot()
            batch.append(incoming(device_id, device.make_evidence(env.epoch_nonce)))
        pipeline.process(batch)


class Leader:
    """The leader's watch; ``run`` lets the newest verdicts settle (two passes ``settle_s`` apart)."""

    def __init__(self, env: HubEnv) -> None:
        self.watch = AnomalyWatch(env.store, env.keys, env.references, CONFIG, command_ttl_s=3600)
        self.tick = 0.0

    def run(self, now: float) -> PassResult:
        first = self.watch.run_pass(now, tick=self.tick)
        self.tick += CONFIG.settle_s
        second = self.watch.run_pass(now, tick=self.tick)
        return PassResult(first.processed + second.processed, first.opened + second.opened,
                          first.closed + second.closed, second.open_by_kind, second.devices_by_status,
                          first.publishes + second.publishes, first.quarantined + second.quarantined)


@pytest.fixture
def leader(env: HubEnv) -> Leader:
    return Leader(env)


def audit_by_detector(env: HubEnv) -> list[dict[str, object]]:
    with env.store.reading() as conn:
        return [r for r in env.store.audit_rows(conn) if r["actor"] == "anomaly-detector"]


def test_boot_loop_holds_the_device_at_warning_until_the_finding_closes(env: HubEnv, leader: Leader) -> None:
    clock = Clock()
    pipeline = env.pipeline(clock=clock)
    rounds(env, pipeline, clock, 16, reboot=LOOPER)
    result = leader.run(clock.t + 2)
    assert [(a.device_id, a.kind) for a in result.opened] == [(LOOPER, anomaly.BOOTS)]
    assert result.processed == 16 * 12
    assert result.open_by_kind == {anomaly.BOOTS: 1}
    assert env.device(LOOPER).status == "warning" and env.device(LOOPER).anomaly_hold
    assert env.device("env-sensor-0001").status == "trusted"
    status = [r for r in audit_by_detector(env) if r["action"] == "status"]
    assert len(status) == 1 and json.loads(str(status[0]["detail"]))["to"] == "warning"

    # Affirming evidence does not lift the hold (the decider keeps the device at warning).
    rounds(env, pipeline, clock, 1)
    assert env.device(LOOPER).status == "warning"
    assert env.verdicts(LOOPER)[-1]["action"] == "warn"

    # The reboots leave the window: the finding closes, the device is trusted again.
    rounds(env, pipeline, clock, CONFIG.window + 2)
    result = leader.run(clock.t + 2)
    assert result.closed == 1 and result.open_by_kind == {}
    with env.store.reading() as conn:
        (row,) = findings(conn, open_only=False)
    assert row["closed_by"] == "detector" and not row["is_open"]
    assert env.device(LOOPER).status == "trusted" and not env.device(LOOPER).anomaly_hold


def test_policy_ignore_records_the_finding_only(env: HubEnv, leader: Leader) -> None:
    set_policy(env, "ignore")
    clock = Clock()
    rounds(env, env.pipeline(clock=clock), clock, 16, reboot=LOOPER)
    result = leader.run(clock.t + 2)
    assert len(result.opened) == 1
    assert env.device(LOOPER).status == "trusted" and not env.device(LOOPER).anomaly_hold


def test_policy_quarantine_holds_for_an_operator(env: HubEnv, leader: Leader) -> None:
    set_policy(env, "quarantine")
    clock = Clock()
    pipeline = env.pipeline(clock=clock)
    rounds(env, pipeline, clock, 16, reboot=LOOPER)
    result = leader.run(clock.t + 2)
    assert result.quarantined == (LOOPER,)
    (command,) = result.publishes
    assert command.topic == wire.device_topic(LOOPER, wire.COMMAND) and command.retain and command.trace_id
    assert env.device(LOOPER).status == "quarantined" and env.device(LOOPER).quarantine_hold
    rounds(env, pipeline, clock, 1)
    assert env.device(LOOPER).status == "quarantined", "clean evidence does not release an anomaly quarantine"
    again = leader.run(clock.t + 2)
    assert again.publishes == () and again.opened == ()


def test_signature_failures_never_move_a_device(env: HubEnv, leader: Leader) -> None:
    set_policy(env, "quarantine")
    clock = Clock()
    pipeline = env.pipeline(clock=clock)
    rounds(env, pipeline, clock, 10)
    victim = "env-sensor-0005"
    forger = SimDevice(victim, CLASS, Profile.FORGED, seed="security-tests")
    for _ in range(6):
        clock.t += 1
        pipeline.process([incoming(victim, forger.make_evidence(env.epoch_nonce))])
    result = leader.run(clock.t + 2)
    assert [(a.device_id, a.kind) for a in result.opened] == [(victim, anomaly.SIGNATURES)]
    assert result.publishes == () and env.device(victim).status == "trusted"


def test_verdicts_are_read_once_settled(env: HubEnv) -> None:
    clock = Clock()
    pipeline = env.pipeline(clock=clock)
    leader = AnomalyWatch(env.store, env.keys, env.references, CONFIG, command_ttl_s=3600)
    rounds(env, pipeline, clock, 3)
    assert leader.run_pass(clock.t, tick=0.0).processed == 0, "nothing has been visible for settle_s yet"
    rounds(env, pipeline, clock, 1)
    assert leader.run_pass(clock.t, tick=CONFIG.settle_s / 2).processed == 0
    assert leader.run_pass(clock.t, tick=CONFIG.settle_s).processed == 3 * 12, "what was visible at tick 0"
    assert leader.run_pass(clock.t, tick=CONFIG.settle_s * 2).processed == 12
    assert leader.run_pass(clock.t, tick=CONFIG.settle_s * 3).processed == 0
    clock.t -= 3600  # the wall clock stepped back an hour: settling does not depend on it
    rounds(env, pipeline, clock, 1)
    leader.run_pass(clock.t, tick=CONFIG.settle_s * 4)
    assert leader.run_pass(clock.t, tick=CONFIG.settle_s * 5).processed == 12


def test_cli_lists_closes_and_device_show_explains(env: HubEnv, leader: Leader) -> None:
    clock = Clock()
    pipeline = env.pipeline(clock=clock)
    rounds(env, pipeline, clock, 16, reboot=LOOPER)
    leader.run(clock.t + 2)

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, ["--state-dir", str(env.settings.state_dir), *args],
                                    env={"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY)},
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    (listed,) = json.loads(run("anomalies", "--json"))
    assert listed["device_id"] == LOOPER and listed["kind"] == anomaly.BOOTS and listed["open"]
    assert "boot count climbed by" in run("anomalies")
    shown = json.loads(run("device", "show", LOOPER, "--json"))
    assert shown["anomalies"][0]["explanation"] == listed["explanation"]
    assert "closed finding" in run("anomalies", "close", str(listed["id"]), "--reason", "bench unit, known flaky PSU")
    assert json.loads(run("anomalies", "--json")) == []
    assert json.loads(run("anomalies", "--all", "--json"))[0]["closed_by"] == "operator"

    # Still rebooting: an operator's close is respected until the score falls back.
    rounds(env, pipeline, clock, 4, reboot=LOOPER)
    assert leader.run(clock.t + 2).opened == ()


def test_export_fills_the_leader_gauges() -> None:
    metrics = HubMetrics("w0")
    export(metrics, PassResult(0, open_by_kind={anomaly.RARE: 2}, devices_by_status={"trusted": 9, "warning": 2}))
    export(metrics, PassResult(0, open_by_kind={anomaly.RARE: 2}, devices_by_status={"trusted": 11}))
    value = metrics.registry.get_sample_value
    assert value("attest_anomaly_findings", {"kind": anomaly.RARE}) == 2
    assert value("attest_anomaly_findings", {"kind": anomaly.CADENCE}) == 0
    assert value("attest_devices", {"status": "trusted"}) == 11
    assert value("attest_devices", {"status": "warning"}) is None, "a status no device has any more is dropped"


def test_cli_list_into_a_pipe_keeps_one_finding_per_line(env: HubEnv, leader: Leader) -> None:
    """Off a terminal nothing is wrapped or cut: one line per finding, the explanation whole."""
    looper = "env-sensor-building-7-floor-3-east-wing-rack-12-slot-04"
    env.add_device(looper, CLASS)
    clock = Clock()
    pipeline = env.pipeline(clock=clock)
    rounds(env, pipeline, clock, 16, reboot=looper)
    leader.run(clock.t + 2)

    def run(*args: str, columns: str | None = None) -> str:
        result = CliRunner().invoke(cli, ["--state-dir", str(env.settings.state_dir), *args],
                                    env={"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY), "COLUMNS": columns},
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return str(result.stdout)

    (finding,) = json.loads(run("anomalies", "--json"))
    assert finding["device_id"] == looper and len(finding["explanation"]) > 60
    piped = run("anomalies").splitlines()  # CliRunner's standard output is no terminal
    assert len(piped) == 2, piped  # the header and the finding
    assert looper in piped[1] and finding["explanation"] in piped[1] and "since" in piped[0], piped
    narrow = run("anomalies", columns="80").splitlines()  # a terminal's width is still kept
    assert all(len(line) <= 80 for line in narrow) and len(narrow) > 2, narrow
