"""The orchestrator on a real SQLite store with in-memory messages (no broker).

Each test feeds ``Pipeline.process`` a list of ``Incoming`` messages and checks the committed
verdicts, the device row and what would be published.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    EPOCH,
    HubEnv,
    build_env,
    env_fixture,
    incoming,
    malleate,
    only,
    parts,
    publishes_on,
    rebuild,
)

from device_sim import cose as sim_cose
from device_sim.commands import parse_command
from device_sim.records import Profile
from hub import wire
from hub.appraisal.operations import OperationError, revoke, set_quarantine
from hub.appraisal.pipeline import Pipeline
from hub.appraisal.ratelimit import RateLimiter
from hub.crypto.freshness import epoch_nonce
from hub.crypto.hubstate import open_store
from hub.crypto.keys import public_pem

A = "smart-meter-0001"
B = "smart-meter-0002"


env = env_fixture(A, B)


def hub_key(env: HubEnv) -> sim_cose.VerifyKey:
    from device_sim.keys import load_hub_public_key

    return load_hub_public_key(public_pem(env.keys.public_key).encode())


def commands(env: HubEnv, outcome: Any) -> list[tuple[str, bool]]:
    """(command type, retained) of every command the outcome would publish, verified as a device would."""
    return [(parse_command(p.payload, hub_key(env)).type, p.retain) for p in publishes_on(outcome, wire.COMMAND)]


def test_honest_evidence_is_affirmed(env: HubEnv) -> None:
    outcome = env.pipeline().process([incoming(A, env.evidence(A))])
    decision = only(outcome)
    assert decision.status == "affirming" and decision.action == "affirm"
    assert env.device(A).status == "trusted" and env.device(A).seq == 1
    assert len(publishes_on(outcome, wire.RESULT)) == 1 and commands(env, outcome) == []


# --- identity ------------------------------------------------------------------------


def test_unknown_device_rejected(env: HubEnv) -> None:
    stranger = env.add_device("smart-meter-0099", enrolled=False)
    decision = only(env.pipeline().process([incoming(stranger.device_id, env.evidence(stranger.device_id))]))
    assert decision.status == "rejected" and decision.reason == "unknown-device"


def test_evidence_on_another_devices_topic_rejected(env: HubEnv) -> None:
    env.pipeline().process([incoming(B, env.evidence(B))])
    decision = only(env.pipeline().process([incoming(B, env.evidence(A))]))
    assert decision.status == "rejected" and decision.reason == "kid-mismatch"
    assert env.device(B).status == "trusted" and env.device(A).seq == -1


def test_revoke_and_quarantine_need_a_reason_whoever_calls_them(env: HubEnv) -> None:
    """The CLI and the API check the reason; the operations they call refuse a blank one too (audit says why)."""
    for blank in ("", "   "):
        with pytest.raises(OperationError, match="reason"):
            revoke(env.store, A, blank, actor="test")
        with pytest.raises(OperationError, match="reason"):
            set_quarantine(env.store, env.keys, A, True, blank, 60, actor="test")
    assert not env.device(A).revoked


def test_revoked_device_rejected(env: HubEnv) -> None:
    revoke(env.store, A, "lost", actor="test")
    decision = only(env.pipeline().process([incoming(A, env.evidence(A))]))
    assert decision.status == "rejected" and decision.reason == "revoked"
    assert env.device(A).status == "revoked"


def _after_verify(pipeline: Pipeline, action: Callable[[], None]) -> None:
    """Run ``action`` once, after the unlocked signature check and before the deciding transaction."""
    original = pipeline._verify
    done: list[bool] = []

    def wrapped(item: Any, anchor: Any) -> None:
        original(item, anchor)
        if not done:
            done.append(True)
            action()

    pipeline._verify = wrapped  # type: ignore[method-assign]


def test_revocation_between_verify_and_commit_is_honoured(env: HubEnv) -> None:
    """Time-of-check/time-of-use: the signature verified with the old key, the device is revoked before the
    transaction; the transaction re-reads the device and the verdict is negative."""
    pipeline = env.pipeline()
    _after_verify(pipeline, lambda: revoke(env.store, A, "compromised", actor="test"))
    decision = only(pipeline.process([incoming(A, env.evidence(A))]))
    assert decision.status == "rejected" and decision.reason == "revoked"
    device = env.device(A)
    assert device.status == "revoked" and device.seq == -1


def test_key_change_between_verify_and_commit_is_honoured(env: HubEnv) -> None:
    def rotate() -> None:
        with env.store.transaction() as conn:
            device = env.store.devices(conn, [A])[A]
            device.key_version += 1
            env.store.save_devices(conn, [device])

    pipeline = env.pipeline()
    _after_verify(pipeline, rotate)
    decision = only(pipeline.process([incoming(A, env.evidence(A))]))
    assert decision.status == "rejected" and decision.reason == "key-rotated"


# --- replay and duplicates -----------------------------------------------------------------


def test_replay_below_high_water_rejected(env: HubEnv) -> None:
    """Withheld evidence released once the mark is a whole window (64) above it: a replay. Within the window
    it would be judged late (tests/test_antireplay.py)."""
    withheld = env.evidence(A, env.claims(A, seq=2))
    pipeline = env.pipeline()
    only(pipeline.process([incoming(A, env.evidence(A, env.claims(A, seq=2 + 64)))]))
    decision = only(pipeline.process([incoming(A, withheld)]))
    assert decision.status == "rejected" and decision.reason == "replay"
    assert env.device(A).seq == 66


def test_new_boot_resets_the_sequence(env: HubEnv) -> None:
    pipeline = env.pipeline()
    only(pipeline.process([incoming(A, env.evidence(A, env.claims(A, seq=9)))]))
    decision = only(pipeline.process([incoming(A, env.evidence(A, env.claims(A, seq=1, bootcount=2)))]))
    assert decision.status == "affirming"
    old_boot = only(pipeline.process([incoming(A, env.evidence(A, env.claims(A, seq=10, bootcount=1)))]))
    assert old_boot.reason == "replay"


def test_duplicate_delivery_gives_no_second_verdict_and_republishes(env: HubEnv) -> None:
    raw = env.evidence(A)
    pipeline = env.pipeline()
    first = only(pipeline.process([incoming(A, raw)]))
    again = pipeline.process([incoming(A, raw)])
    second = only(again)
    assert first.status == "affirming" and second.status == "duplicate"
    assert len(env.verdicts(A)) == 1
    assert len(publishes_on(again, wire.RESULT)) == 1  # the stored result, re-sent


def test_duplicate_within_one_batch(env: HubEnv) -> None:
    raw = env.evidence(A)
    outcome = env.pipeline().process([incoming(A, raw), incoming(A, raw)])
    assert [d.status for d in outcome.decisions] == ["affirming", "duplicate"]
    assert len(env.verdicts(A)) == 1


def test_duplicate_of_quarantining_evidence_resends_the_quarantine(env: HubEnv) -> None:
    claims = env.claims(A)
    claims[wire.OEMBOOT] = False
    raw = env.evidence(A, claims)
    pipeline = env.pipeline()
    assert commands(env, pipeline.process([incoming(A, raw)])) == [("quarantine", True)]
    again = pipeline.process([incoming(A, raw)])
    assert only(again).status == "duplicate" and commands(env, again) == [("quarantine", True)]
    assert env.command_count(A) == 1


@pytest.mark.parametrize("variant", ["malleated-signature", "unprotected-header-added"])
def test_malleated_signature_gives_no_second_verdict(env: HubEnv, variant: str) -> None:
    """The same evidence as other bytes (s -> n-s, or an added unprotected header) still verifies;
    the dedup key comes from the signed payload, so it is recognised as a duplicate."""
    raw = env.evidence(A)
    if variant == "malleated-signature":
        twin = malleate(raw)
    else:
        body = parts(raw)
        body[1] = {99: "added in transit"}
        twin = rebuild(body)
    assert twin != raw
    pipeline = env.pipeline()
    assert only(pipeline.process([incoming(A, raw)])).status == "affirming"
    assert only(pipeline.process([incoming(A, twin)])).status == "duplicate"
    assert len(env.verdicts(A)) == 1


# --- freshness ---------------------------------------------------------------------------


def test_stale_epoch_nonce_rejected(env: HubEnv) -> None:
    stale = epoch_nonce(env.keys.nonce_secret, EPOCH - 2)
    decision = only(env.pipeline().process([incoming(A, env.evidence(A, env.claims(A, nonce=stale)))]))
    assert decision.status == "rejected" and decision.reason == "stale-nonce"
    assert env.device(A).status == "enrolled"


def test_previous_epoch_nonce_accepted(env: HubEnv) -> None:
    previous = epoch_nonce(env.keys.nonce_secret, EPOCH - 1)
    decision = only(env.pipeline().process([incoming(A, env.evidence(A, env.claims(A, nonce=previous)))]))
    assert decision.status == "affirming"


@pytest.mark.parametrize("nonce", [b"E" + bytes(31), b"x" * 32, b"short"], ids=["forged-mac", "unknown", "length"])
def test_forged_or_malformed_nonce_rejected(env: HubEnv, nonce: bytes) -> None:
    decision = only(env.pipeline().process([incoming(A, env.evidence(A, env.claims(A, nonce=nonce)))]))
    assert decision.status == "rejected" and decision.reason == "bad-nonce"


def test_challenge_nonce_used_once(env: HubEnv) -> None:
    nonce = env.challenge(A)
    pipeline = env.pipeline()
    first = only(pipeline.process([incoming(A, env.evidence(A, env.claims(A, nonce=nonce)))]))
    second = only(pipeline.process([incoming(A, env.evidence(A, env.claims(A, nonce=nonce)))]))
    assert first.status == "affirming"
    assert second.status == "rejected" and second.reason == "nonce-reused"


def test_challenge_nonce_used_twice_in_one_batch(env: HubEnv) -> None:
    nonce = env.challenge(A)
    batch = [incoming(A, env.evidence(A, env.claims(A, nonce=nonce))) for _ in range(2)]
    assert [d.reason or d.status for d in env.pipeline().process(batch).decisions] == ["affirming", "nonce-reused"]


def test_challenge_for_another_device_rejected(env: HubEnv) -> None:
    decision = only(env.pipeline().process([incoming(A, env.evidence(A, env.claims(A, nonce=env.challenge(B))))]))
    assert decision.reason == "bad-nonce"


def test_two_workers_race_one_challenge_nonce(env: HubEnv) -> None:
    """Two pipelines (two workers, two engines) on the same database, in two threads, each with evidence
    answering the same challenge: exactly one is accepted."""
    nonce = env.challenge(A)
    batches = [[incoming(A, env.evidence(A, env.claims(A, nonce=nonce)))] for _ in range(2)]
    stores = [env.store, open_store(env.settings)]
    pipelines = [Pipeline(s, env.pipeline().registry, env.keys, env.references) for s in stores]
    barrier = threading.Barrier(2)
    results: list[str] = []
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            barrier.wait(10)
            outcome = pipelines[index].process(batches[index])
            results.extend(d.status for d in outcome.decisions)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stores[1].close()
    assert errors == []
    assert sorted(results) == ["affirming", "rejected"]
    with env.store.reading() as conn:
        used = conn.exec_driver_sql("SELECT count(*) FROM used_nonce").scalar_one()
    assert used == 1


# --- flooding ----------------------------------------------------------------------------


def test_flooding_device_does_not_push_out_another_devices_evidence(env: HubEnv) -> None:
    clock = [1000.0]
    limiter = RateLimiter(rate_per_s=1.0, burst=2)
    pipeline = env.pipeline(clock=lambda: clock[0], rate_limiter=limiter)
    flood_raw = env.evidence(A)
    b_statuses: list[str] = []
    dropped = 0
    for _ in range(3):
        batch = [incoming(A, flood_raw) for _ in range(150)]
        batch.insert(75, incoming(B, env.evidence(B)))
        outcome = pipeline.process(batch)
        b_statuses += [d.status for d in outcome.decisions if d.device_id == B]
        dropped += len(outcome.dropped)
        clock[0] += 1.0
    assert b_statuses == ["affirming"] * 3
    assert dropped >= 3 * 147  # A keeps at most its burst plus the refill
    assert env.device(B).status == "trusted" and env.device(B).seq == 3


# --- what evidence can do to a device ---------------------------------------------------------


def test_forged_evidence_cannot_quarantine(env: HubEnv) -> None:
    pipeline = env.pipeline()
    only(pipeline.process([incoming(A, env.evidence(A))]))
    forger = env.add_device(A + "-forged-signer", profile=Profile.FORGED, enrolled=False)
    claims = env.claims(A)
    claims[wire.DBGSTAT] = wire.DBG_ENABLED  # would quarantine if it were believed
    from helpers import sign_claims

    raw = sign_claims(claims, forger._signing_key, A)
    outcome = pipeline.process([incoming(A, raw)])
    decision = only(outcome)
    assert decision.status == "rejected" and decision.reason == "bad-signature" and not decision.authenticated
    assert env.device(A).status == "trusted" and commands(env, outcome) == []


def test_garbage_on_a_device_topic_cannot_quarantine(env: HubEnv) -> None:
    pipeline = env.pipeline()
    only(pipeline.process([incoming(A, env.evidence(A))]))
    outcome = pipeline.process([incoming(A, b"\xd2\x84garbage"), incoming(A, b"x" * 100_000)])
    assert [d.reason for d in outcome.decisions] == ["malformed-cbor", "too-large"]
    assert env.device(A).status == "trusted" and commands(env, outcome) == []


def test_contraindicated_verdict_publishes_one_retained_quarantine(env: HubEnv) -> None:
    claims = env.claims(A)
    claims[wire.OEMBOOT] = False
    pipeline = env.pipeline()
    outcome = pipeline.process([incoming(A, env.evidence(A, claims))])
    decision = only(outcome)
    assert decision.status == "contraindicated" and decision.action == "quarantine"
    assert commands(env, outcome) == [("quarantine", True)]
    command = parse_command(publishes_on(outcome, wire.COMMAND)[0].payload, hub_key(env))
    assert command.sub == A and command.exp > time.time()
    assert env.device(A).status == "quarantined"
    # more bad evidence: still quarantined, no second command
    again = pipeline.process([incoming(A, env.evidence(A, {**env.claims(A), wire.OEMBOOT: False}))])
    assert only(again).action == "already-quarantined" and commands(env, again) == []
    assert env.command_count(A) == 1


def test_signed_but_malformed_evidence_quarantines(env: HubEnv) -> None:
    """The device signed a claims set that breaks the profile: its own fault, so it counts against it."""
    claims = env.claims(A)
    claims[wire.EAT_PROFILE] = "tag:example.com,2026:other"
    outcome = env.pipeline().process([incoming(A, env.evidence(A, claims))])
    assert only(outcome).status == "contraindicated" and env.device(A).status == "quarantined"


def test_affirming_evidence_releases_an_automatic_quarantine(env: HubEnv) -> None:
    pipeline = env.pipeline()
    pipeline.process([incoming(A, env.evidence(A, {**env.claims(A), wire.DBGSTAT: wire.DBG_ENABLED}))])
    assert env.device(A).status == "quarantined"
    outcome = pipeline.process([incoming(A, env.evidence(A))])
    assert only(outcome).action == "release" and commands(env, outcome) == [("release", True)]
    assert env.device(A).status == "trusted"


def test_manual_quarantine_is_not_released_by_evidence(env: HubEnv) -> None:
    set_quarantine(env.store, env.keys, A, True, "investigating", ttl_s=3600, actor="test")
    outcome = env.pipeline().process([incoming(A, env.evidence(A))])
    decision = only(outcome)
    assert decision.status == "affirming" and decision.action == "awaiting-operator-release"
    assert commands(env, outcome) == [] and env.device(A).status == "quarantined"


def test_unknown_media_type_and_non_device_topics(env: HubEnv) -> None:
    outcome = env.pipeline().process([
        incoming(A, env.evidence(A), content_type="application/json"),
        incoming(A, env.evidence(A), leaf="telemetry", content_type=None),
        incoming("", b"x"),
    ])
    assert [d.reason for d in outcome.decisions] == ["unknown-media-type", "unknown-media-type"]
    assert len(outcome.dropped) == 1
    assert env.device(A).status == "enrolled"


# --- clock skew ----------------------------------------------------------------------------


def _scenario(env: HubEnv, clock: Callable[[], float]) -> list[tuple[str, str, str]]:
    pipeline = env.pipeline(clock=clock)
    stale = epoch_nonce(env.keys.nonce_secret, EPOCH - 2)
    nonce = env.challenge(B)
    steps = [
        [incoming(A, env.evidence(A, env.claims(A, seq=1)))],
        [incoming(A, env.evidence(A, env.claims(A, seq=70)))],
        [incoming(A, env.evidence(A, env.claims(A, seq=2)))],  # below the anti-replay window: a replay
        [incoming(A, env.evidence(A, env.claims(A, seq=71, nonce=stale)))],
        [incoming(B, env.evidence(B, env.claims(B, seq=1, nonce=nonce)))],
        [incoming(B, env.evidence(B, env.claims(B, seq=2, nonce=nonce)))],
        [incoming(B, env.evidence(B, {**env.claims(B, seq=3), wire.OEMBOOT: False}))],
        [incoming(B, env.evidence(B, env.claims(B, seq=4)))],
    ]
    return [(d.status, d.reason, d.action) for batch in steps for d in pipeline.process(batch).decisions]


@pytest.mark.parametrize("skew", [-600.0, 600.0])
def test_clock_skew_changes_no_verdict(tmp_path: Path, skew: float) -> None:
    results = []
    for name, offset in (("true", 0.0), ("skewed", skew)):
        hub = build_env(tmp_path / name)
        hub.add_device(A)
        hub.add_device(B)
        try:
            results.append(_scenario(hub, lambda o=offset: time.time() + o))  # type: ignore[misc]
        finally:
            hub.close()
    assert results[0] == results[1]
    assert [r[0] for r in results[0]] == ["affirming", "affirming", "rejected", "rejected", "affirming", "rejected",
                                          "contraindicated", "affirming"]


@pytest.mark.parametrize("variant", ["same-bytes", "malleated-signature"])
def test_replayed_signed_malformed_evidence_cannot_requarantine(env: HubEnv, variant: str) -> None:
    """Signed evidence that breaks the profile carries no checked nonce or counter, so a copy of it must not
    act again: after the device is released, replaying it (as is, or with s -> n-s) gives no new verdict."""
    claims = env.claims(A)
    claims[wire.EAT_PROFILE] = "tag:example.com,2026:other"
    bad = env.evidence(A, claims)
    pipeline = env.pipeline()
    assert only(pipeline.process([incoming(A, bad)])).action == "quarantine"
    assert only(pipeline.process([incoming(A, env.evidence(A))])).action == "release"
    copy = bad if variant == "same-bytes" else malleate(bad)
    sent = env.command_count(A)
    outcome = pipeline.process([incoming(A, copy)])
    # the copy gets its stored result (its receipt), not retained: the later release result stands; and the
    # device's latest state command again (the release), no new command
    assert only(outcome).status == "duplicate" and commands(env, outcome) == [("release", True)]
    assert [p.retain for p in publishes_on(outcome, wire.RESULT)] == [False]
    assert env.command_count(A) == sent
    assert env.device(A).status == "trusted" and len(env.verdicts(A)) == 2
