"""A device whose rejected messages per minute reach its policy's limit gets a ``rejection-rate`` finding,
and by policy the status ``warning`` or a quarantine (hub/anomaly/rejections.py, hub/anomaly/watch.py)."""

from __future__ import annotations

import time

import pytest
from helpers import HubEnv, env_fixture, incoming, only, publishes_on

from device_sim import firmware
from device_sim.commands import parse_command
from device_sim.keys import load_hub_public_key
from hub import wire
from hub.anomaly.rejections import assess_rejections
from hub.anomaly.stats import REJECTIONS, DetectorConfig
from hub.anomaly.watch import AnomalyWatch
from hub.crypto.keys import public_pem
from hub.reference.policy import PolicyError, default_policy, load_policy
from hub.server.localhub import MANIFESTS_DIR

CLASS = firmware.SMART_METER
A, B = "smart-meter-0001", "smart-meter-0002"
CONFIG = DetectorConfig(settle_s=0.0)


env = env_fixture(A, B)


def set_policy(env: HubEnv, extra: str) -> None:
    text = (MANIFESTS_DIR / CLASS / "policy.toml").read_text().replace("version = 1", "version = 2", 1)
    assert env.references.offer_policy(extra + "\n" + text) is not None


def flood(env: HubEnv, device_id: str, count: int, now: float) -> None:
    env.pipeline(clock=lambda: now).process([incoming(device_id, b"\xd2\x84junk%d" % i) for i in range(count)])


def watch(env: HubEnv) -> AnomalyWatch:
    return AnomalyWatch(env.store, env.keys, env.references, CONFIG, command_ttl_s=3600)


def findings(env: HubEnv, open_only: bool = True) -> list[dict[str, object]]:
    from hub.anomaly.records import findings as read

    with env.store.reading() as conn:
        return read(conn, open_only=open_only, kind=REJECTIONS)


def test_a_flooding_enrolled_device_is_warned_then_released(env: HubEnv) -> None:
    now = time.time()
    flood(env, A, 45, now)  # default policy: 30 a minute; 20 stored, all 45 counted
    flood(env, B, 5, now)
    leader = watch(env)
    result = leader.run_pass(now, tick=0.0)
    assert [(a.device_id, a.kind) for a in result.opened] == [(A, REJECTIONS)]
    assert "45 messages rejected within a minute" in result.opened[0].explanation
    assert env.device(A).status == "warning" and env.device(A).anomaly_hold
    assert env.device(B).status == "enrolled"
    result = leader.run_pass(now + 180, tick=1.0)  # two quiet minutes: below half the limit
    assert result.closed == 1 and findings(env) == []
    assert env.device(A).status == "enrolled" and not env.device(A).anomaly_hold


def test_a_trusted_device_is_held_at_warning_while_the_finding_is_open(env: HubEnv) -> None:
    now = time.time()
    only(env.pipeline(clock=lambda: now).process([incoming(A, env.evidence(A))]))
    flood(env, A, 30, now)
    watch(env).run_pass(now, tick=0.0)
    assert env.device(A).status == "warning"
    decision = only(env.pipeline(clock=lambda: now + 1).process([incoming(A, env.evidence(A))]))
    assert decision.status == "affirming" and env.device(A).status == "warning"


def test_policy_quarantine(env: HubEnv) -> None:
    set_policy(env, 'rejected = "quarantine"\nrejected_per_min = 10')
    now = time.time()
    flood(env, A, 10, now)
    result = watch(env).run_pass(now, tick=0.0)
    assert result.quarantined == (A,) and env.device(A).status == "quarantined"
    [command] = [parse_command(p.payload, load_hub_public_key(public_pem(env.keys.public_key).encode()))
                 for p in result.publishes if p.topic == wire.device_topic(A, wire.COMMAND)]
    assert command.type == wire.COMMAND_QUARANTINE and "rejected within a minute" in command.reason


def test_policy_ignore_records_only(env: HubEnv) -> None:
    set_policy(env, 'rejected = "ignore"')
    now = time.time()
    flood(env, A, 40, now)
    result = watch(env).run_pass(now, tick=0.0)
    assert [a.kind for a in result.opened] == [REJECTIONS] and env.device(A).status == "enrolled"


def test_below_the_limit_no_finding(env: HubEnv) -> None:
    now = time.time()
    flood(env, A, 29, now)
    assert watch(env).run_pass(now, tick=0.0).opened == () and env.device(A).status == "enrolled"


def test_zero_switches_it_off(env: HubEnv) -> None:
    set_policy(env, "rejected_per_min = 0")
    now = time.time()
    flood(env, A, 200, now)
    assert watch(env).run_pass(now, tick=0.0).opened == ()


def test_score_reaches_the_threshold_exactly_at_the_limit() -> None:
    minute = 1000
    counts = {A: {minute: 29}, B: {minute - 1: 30}, "stranger": {minute: 500}}
    scored = {a.device_id: a.score for a in assess_rejections(
        counts, {A: CLASS, B: CLASS}, default_policy, minute * 60 + 5, 2.0)}
    assert scored == {A: pytest.approx(2.0 * 29 / 30, abs=1e-3), B: 2.0}  # not enrolled: not assessed


@pytest.mark.parametrize("line", ['rejected = "block"', "rejected_per_min = -1", 'rejected_per_min = "many"'])
def test_policy_values_are_checked(line: str) -> None:
    with pytest.raises(PolicyError, match="rejected"):
        load_policy(f'device_class = "x"\n{line}\n')


def test_rejected_evidence_results_and_commands_stay_few(env: HubEnv) -> None:
    """The flood's own results are bounded by the storage budget; the quarantine is one command."""
    set_policy(env, 'rejected = "quarantine"')
    now = time.time()
    outcome = env.pipeline(clock=lambda: now).process([incoming(A, b"junk%d" % i) for i in range(100)])
    assert len(publishes_on(outcome, wire.RESULT)) == 20
    assert len(watch(env).run_pass(now, tick=0.0).publishes) == 1
