"""The anti-replay window (RFC 4303 §3.4.3): the pure window, then the orchestrator judging late evidence.

Evidence below a device's ``(bootcount, seq)`` mark, within the window and never judged, with a fresh nonce
and a good signature, is judged late: its verdict, its result (the receipt), action ``late``, no state moved
back. At or below the window's bottom, judged already, or of another boot below the mark: ``replay``.
"""

from __future__ import annotations

import time

import cbor2
import pytest
from helpers import EPOCH, HubEnv, env_fixture, incoming, only, publishes_on

from hub import wire
from hub.appraisal import antireplay
from hub.appraisal.antireplay import LATE, NEW, REPLAY, judged, place
from hub.appraisal.pipeline import Pipeline
from hub.crypto.cose import decode_sign1
from hub.crypto.freshness import epoch_nonce
from hub.schemes import SchemeRegistry, default_schemes
from hub.server.metrics import HubMetrics
from hub.server.observe import record_batch

W = antireplay.DEFAULT_WIDTH
A = "smart-meter-0001"
env = env_fixture(A)


def run(counters: list[tuple[int, int]], width: int = W) -> tuple[list[str], tuple[int, int], bytes | None]:
    """Judge ``counters`` in turn from a new device; each new or late one is accepted (as the hub does)."""
    mark: tuple[int, int] = (-1, -1)
    bitmap: bytes | None = None
    placed = []
    for counter in counters:
        where = place(counter, mark, bitmap, width)
        placed.append(where)
        if where != REPLAY:
            bitmap = judged(counter, mark, bitmap, width)
            mark = max(mark, counter)
    return placed, mark, bitmap


# --- the window, pure ---------------------------------------------------------------------------------


def test_in_order_counters_are_all_new() -> None:
    placed, mark, bitmap = run([(1, s) for s in range(1, 6)])
    assert placed == [NEW] * 5 and mark == (1, 5)
    assert antireplay.bits(bitmap, W) == 0b11111  # the mark and the four below it were judged


def test_out_of_order_within_the_window_is_late_once() -> None:
    placed, mark, _ = run([(1, 10), (1, 7), (1, 9), (1, 7), (1, 8), (1, 11), (1, 8)])
    assert placed == [NEW, LATE, LATE, REPLAY, LATE, NEW, REPLAY]
    assert mark == (1, 11)


def test_the_edge_of_the_window_is_w_minus_1_below_the_mark() -> None:
    mark = (1, 1000)
    bitmap = judged(mark, (1, 999), b"\x00" * (W // 8), W)  # the mark judged, none of the W - 1 below it
    assert place((1, 1000 - (W - 1)), mark, bitmap, W) == LATE
    assert place((1, 1000 - W), mark, bitmap, W) == REPLAY
    assert place((1, 1000 - W - 1), mark, bitmap, W) == REPLAY
    assert place(mark, mark, bitmap, W) == REPLAY  # the mark itself was judged
    # the oldest bit falls out as the mark moves on: a counter W - 1 below, then one more new counter
    moved = judged((1, 1001), mark, bitmap, W)
    assert place((1, 1000 - (W - 1)), (1, 1001), moved, W) == REPLAY
    assert place((1, 1000 - (W - 2)), (1, 1001), moved, W) == LATE


def test_a_bit_already_set_is_a_replay() -> None:
    mark = (3, 50)
    bitmap = judged((3, 50), (3, 40), None, W)
    assert place((3, 45), mark, bitmap, W) == LATE
    bitmap = judged((3, 45), mark, bitmap, W)
    assert place((3, 45), mark, bitmap, W) == REPLAY
    assert place((3, 40), mark, bitmap, W) == REPLAY  # judged before the mark moved (shifted along)


def test_a_new_bootcount_resets_the_window() -> None:
    placed, mark, bitmap = run([(1, 5), (1, 9), (2, 3), (2, 1), (1, 8), (1, 9), (1, 10), (2, 2), (2, 1)])
    assert placed == [NEW, NEW, NEW, LATE, REPLAY, REPLAY, REPLAY, LATE, REPLAY]
    assert mark == (2, 3) and antireplay.bits(bitmap, W) == 0b111


def test_a_row_without_a_window_or_a_narrower_one_counts_the_unknown_as_judged() -> None:
    assert place((1, 9), (1, 10), None, W) == REPLAY  # a row from before the window: nothing is late
    narrow = judged((1, 10), (1, 1), None, 8)  # 8 bits: the mark and 7 below, none of them judged
    assert place((1, 3), (1, 10), narrow, 16) == LATE
    assert place((1, 2), (1, 10), narrow, 16) == REPLAY  # beyond what the narrower window tracked
    assert place((1, 9), (1, 10), narrow, 1) == REPLAY  # width 1: no window, as before it existed


def test_a_replay_says_why() -> None:
    assert antireplay.why_replay((1, 9), (2, 3), W) == "counter (1, 9) is not above (2, 3): an earlier boot"
    assert antireplay.why_replay((2, 3 - W + 64), (2, 3 + 64), W).endswith("bottom of the window of 64")
    assert antireplay.why_replay((2, 2), (2, 3), W) == "counter (2, 2) is not above (2, 3): judged already"
    assert antireplay.why_replay((2, 2), (2, 3), 1) == "counter (2, 2) is not above (2, 3)"


def test_a_jump_of_the_counter_costs_nothing() -> None:
    """A TPM's seq is its clock in ms: a jump far beyond the window leaves only the mark, in W bits."""
    started = time.perf_counter()
    bitmap = judged((1, 2**62), (1, 5), None, W)
    assert time.perf_counter() - started < 0.01 and bitmap == (1).to_bytes(W // 8, "little")


# --- the orchestrator -----------------------------------------------------------------------------------


def evidence(env: HubEnv, seq: int) -> bytes:
    return env.evidence(A, env.claims(A, seq=seq))


def tampered(env: HubEnv, seq: int) -> bytes:
    """Signed evidence of an insecure boot: contraindicated, quarantined by the smart-meter policy."""
    return env.evidence(A, {**env.claims(A, seq=seq), wire.OEMBOOT: False})


def test_late_evidence_is_judged_and_published_but_moves_nothing_back(env: HubEnv) -> None:
    pipeline = env.pipeline()
    assert only(pipeline.process([incoming(A, evidence(env, 5))])).action == "affirm"
    outcome = pipeline.process([incoming(A, evidence(env, 3))])
    decision = only(outcome)
    assert (decision.status, decision.action, decision.reason) == ("affirming", "late", "")
    [result] = publishes_on(outcome, wire.RESULT)
    assert not result.retain, "a late result never replaces the standing one"
    device = env.device(A)
    assert (device.bootcount, device.seq, device.status) == (1, 5, "trusted")
    assert [v["action"] for v in env.verdicts(A)] == ["affirm", "late"]
    # its copy is a duplicate (row 13), re-published not retained; judged again it would be a replay
    again = pipeline.process([incoming(A, evidence(env, 3))])
    assert only(again).status == "duplicate" and [p.retain for p in publishes_on(again, wire.RESULT)] == [False]


def test_late_evidence_is_counted_in_a_metric_and_not_as_a_rejection(env: HubEnv) -> None:
    pipeline = env.pipeline()
    pipeline.process([incoming(A, evidence(env, 5))])
    batch = [incoming(A, evidence(env, s)) for s in (3, 4)]
    metrics = HubMetrics()
    record_batch(metrics, batch, pipeline.process(batch), 0.0, {})
    assert metrics.registry.get_sample_value("attest_evidence_late_total") == 2
    assert metrics.registry.get_sample_value("attest_evidence_rejected_total", {"reason": "replay"}) is None


def test_late_evidence_names_itself_in_the_result(env: HubEnv) -> None:
    pipeline = env.pipeline()
    pipeline.process([incoming(A, evidence(env, 5))])
    [result] = publishes_on(pipeline.process([incoming(A, evidence(env, 4))]), wire.RESULT)
    claims = cbor2.loads(decode_sign1(result.payload).payload)
    assert claims[wire.RES_ACTION] == "late" and claims[wire.RES_EVIDENCE_REF] == "1:4"


def test_at_the_bottom_of_the_window_it_stays_a_replay(env: HubEnv) -> None:
    pipeline = env.pipeline()
    pipeline.process([incoming(A, evidence(env, 100))])
    outcome = pipeline.process([incoming(A, evidence(env, 100 - (W - 1))), incoming(A, evidence(env, 100 - W))])
    assert [(d.evidence_ref, d.status, d.action, d.reason) for d in outcome.decisions] == [
        (f"1:{100 - W}", "rejected", "none", "replay"), (f"1:{100 - (W - 1)}", "affirming", "late", "")]
    assert env.device(A).seq == 100


def test_late_evidence_needs_a_fresh_nonce(env: HubEnv) -> None:
    pipeline = env.pipeline()
    pipeline.process([incoming(A, evidence(env, 5))])
    stale = epoch_nonce(env.keys.nonce_secret, EPOCH - 2)
    decision = only(pipeline.process([incoming(A, env.evidence(A, env.claims(A, seq=3, nonce=stale)))]))
    assert decision.status == "rejected" and decision.reason == "stale-nonce"


def test_several_out_of_order_pieces_in_one_batch(env: HubEnv) -> None:
    pipeline = env.pipeline()
    first = pipeline.process([incoming(A, evidence(env, s)) for s in (4, 2, 3)])
    # within a batch a device's evidence is judged in counter order: none of it late
    assert [(d.evidence_ref, d.action) for d in first.decisions] == [("1:2", "affirm"), ("1:3", "affirm"),
                                                                     ("1:4", "affirm")]
    pipeline.process([incoming(A, evidence(env, 10))])
    second = pipeline.process([incoming(A, evidence(env, s)) for s in (12, 8, 11, 9, 8)])
    assert [(d.evidence_ref, d.action) for d in second.decisions] == [
        ("1:8", "late"), ("1:8", "none"), ("1:9", "late"), ("1:11", "affirm"), ("1:12", "affirm")]
    assert second.decisions[1].status == "duplicate"
    assert env.device(A).seq == 12
    assert [r.retain for r in publishes_on(second, wire.RESULT)] == [False, False, False, True, True]


def test_late_affirming_evidence_does_not_release_a_quarantined_device(env: HubEnv) -> None:
    pipeline = env.pipeline()
    bad = only(pipeline.process([incoming(A, tampered(env, 5))]))
    assert bad.action == "quarantine" and env.device(A).status == "quarantined"
    outcome = pipeline.process([incoming(A, evidence(env, 3))])
    decision = only(outcome)
    assert (decision.status, decision.action) == ("affirming", "late")
    assert publishes_on(outcome, wire.COMMAND) == [], "no release command"
    device = env.device(A)
    assert device.status == "quarantined" and device.seq == 5
    # newer affirming evidence still releases it (policy release = "auto")
    assert only(pipeline.process([incoming(A, evidence(env, 6))])).action == "release"
    assert env.device(A).status == "trusted"


def test_late_contraindicated_evidence_still_quarantines(env: HubEnv) -> None:
    """Escalation is not rolling state back: tampering proved by older evidence of the same boot stands."""
    pipeline = env.pipeline()
    pipeline.process([incoming(A, evidence(env, 5))])
    outcome = pipeline.process([incoming(A, tampered(env, 4))])
    decision = only(outcome)
    assert (decision.status, decision.action) == ("contraindicated", "quarantine")
    assert [p.retain for p in publishes_on(outcome, wire.COMMAND)] == [True]
    device = env.device(A)
    assert device.status == "quarantined" and device.seq == 5, "the mark does not move back"
    # a second late contraindicated piece: already quarantined, nothing more to do
    again = only(pipeline.process([incoming(A, tampered(env, 3))]))
    assert (again.status, again.action) == ("contraindicated", "late")


def test_a_window_of_one_keeps_every_counter_below_the_mark_a_replay(env: HubEnv) -> None:
    pipeline = Pipeline(env.store, SchemeRegistry(default_schemes()), env.keys, env.references, replay_window=1)
    pipeline.process([incoming(A, evidence(env, 5))])
    assert only(pipeline.process([incoming(A, evidence(env, 4))])).reason == "replay"


@pytest.mark.parametrize("width", [0, 4097])
def test_the_window_setting_is_checked(width: int) -> None:
    from hub.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="replay_window"):
        load_settings(None, environ={"ATTEST_HUB_REPLAY_WINDOW": str(width)})
