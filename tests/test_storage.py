"""Bounded storage: what a verdict row keeps, unknown device ids, the per-device rejection budget.

The pipeline on a real SQLite store with in-memory messages (no broker); the broker path is
tests/test_storage_broker.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
from helpers import HubEnv, env_fixture, incoming, only, publishes_on, sign_claims

from device_sim.records import Profile
from hub import wire
from hub.appraisal.pipeline import BatchOutcome
from hub.appraisal.storage import RejectionTally, StorageRules
from hub.appraisal.verdicts import UNKNOWN_DEVICE
from hub.server.metrics import HubMetrics
from hub.server.observe import record_batch
from hub.server.unknown import UnknownDeviceLog
from hub.store.rejections import total_rejections

A = "smart-meter-0001"
NOW = 1_800_000_000.0  # a fixed clock: every message of a test falls in one minute


env = env_fixture(A)


def rows(env: HubEnv, table: str) -> int:
    with env.store.reading() as conn:
        return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


def stored(env: HubEnv, device_id: str = A) -> list[dict[str, object]]:
    return env.verdicts(device_id)


# --- (a) what a verdict row keeps --------------------------------------------------------


@pytest.mark.parametrize("payload", [b"\xd2\x84garbage", b"\xd2" * 60_000], ids=["malformed", "over-the-limit"])
def test_unauthenticated_evidence_is_kept_as_hash_length_and_reason(env: HubEnv, payload: bytes) -> None:
    only(env.pipeline(clock=lambda: NOW).process([incoming(A, payload)]))
    [row] = stored(env)
    assert row["status"] == "rejected" and not row["authenticated"]
    assert row["evidence"] == b"" and row["evidence_length"] == len(payload)
    assert row["evidence_sha256"] == hashlib.sha256(payload).digest()
    assert json.loads(str(row["problems"]))  # the reason
    with env.store.reading() as conn:  # the bytes are nowhere in the database
        dump = b"".join(bytes(r[0] or b"") for r in conn.exec_driver_sql("SELECT evidence FROM verdict"))
    assert payload not in dump


def test_forged_signature_is_kept_as_hash_only(env: HubEnv) -> None:
    forger = env.add_device(A + "-forger", profile=Profile.FORGED, enrolled=False)
    raw = sign_claims(env.claims(A), forger._signing_key, A)
    decision = only(env.pipeline(clock=lambda: NOW).process([incoming(A, raw)]))
    assert decision.reason == "bad-signature"
    [row] = stored(env)
    assert row["evidence"] == b"" and row["evidence_sha256"] == hashlib.sha256(raw).digest()


def test_authenticated_evidence_keeps_its_bytes(env: HubEnv) -> None:
    pipeline = env.pipeline(clock=lambda: NOW)
    raw = env.evidence(A, env.claims(A, seq=100))
    assert only(pipeline.process([incoming(A, raw)])).status == "affirming"
    stale = env.evidence(A, env.claims(A, seq=2))  # signed, below the anti-replay window: rejected, authenticated
    decision = only(pipeline.process([incoming(A, stale)]))
    assert decision.status == "rejected" and decision.authenticated and decision.reason == "replay"
    first, second = stored(env)
    assert first["evidence"] == raw and first["evidence_sha256"] is None and first["evidence_length"] == len(raw)
    assert second["evidence"] == stale and second["evidence_sha256"] is None


def test_authenticated_evidence_over_the_size_limit_is_kept_as_hash(env: HubEnv) -> None:
    pipeline = env.pipeline(clock=lambda: NOW)
    pipeline.decider.storage = StorageRules(max_evidence_bytes=64)
    raw = env.evidence(A)
    assert len(raw) > 64 and only(pipeline.process([incoming(A, raw)])).status == "affirming"
    [row] = stored(env)
    assert row["evidence"] == b"" and row["evidence_sha256"] == hashlib.sha256(raw).digest()


# --- (b) unknown device ids ----------------------------------------------------------------


def test_unknown_device_ids_store_nothing_and_sign_nothing(env: HubEnv) -> None:
    stranger = env.add_device("smart-meter-0099", enrolled=False)
    before = {t: rows(env, t) for t in ("verdict", "audit", "rejection_count", "command")}
    batch = [incoming(stranger.device_id, env.evidence(stranger.device_id))]
    batch += [incoming(f"random-{i:04d}", b"\xd2\x84garbage%d" % i) for i in range(50)]
    outcome = env.pipeline(clock=lambda: NOW).process(batch)
    assert {d.reason for d in outcome.decisions} == {UNKNOWN_DEVICE} and len(outcome.decisions) == 51
    assert outcome.publishes == []  # no signed result per message
    assert {t: rows(env, t) for t in before} == before


def test_unknown_device_ids_are_counted_in_a_metric(env: HubEnv) -> None:
    batch = [incoming(f"random-{i}", b"x") for i in range(7)] + [incoming(A, env.evidence(A))]
    outcome = env.pipeline(clock=lambda: NOW).process(batch)
    metrics = HubMetrics()
    record_batch(metrics, batch, outcome, 0.0, {})
    assert metrics.registry.get_sample_value("attest_unknown_device_messages_total") == 7


def _unknown(n: int, prefix: str = "x") -> BatchOutcome:
    from hub.appraisal.verdicts import Decision
    from hub.reference.trust import Tier, TrustVector

    outcome = BatchOutcome()
    outcome.decisions = [Decision(f"{prefix}-{i}", "firmware", "rejected", False, Tier.CONTRAINDICATED,
                                  TrustVector(), (), "none", "t", "", UNKNOWN_DEVICE) for i in range(n)]
    return outcome


def test_unknown_device_log_line_is_rate_limited_with_a_sample(caplog: pytest.LogCaptureFixture) -> None:
    log = UnknownDeviceLog(interval_s=60.0)
    with caplog.at_level(logging.WARNING, logger="hub.server.unknown"):
        assert log.note(_unknown(100).decisions, now=0.0) == 100
        for second in range(1, 60):
            log.note(_unknown(100, f"s{second}").decisions, now=float(second))
        assert len(caplog.records) == 1
        first = caplog.records[0].getMessage()
        assert "100 message(s) from 100 id(s)" in first and first.count("'x-") == 5
        log.note(_unknown(3, "late").decisions, now=61.0)
    assert len(caplog.records) == 2
    assert "5903 message(s) from 5903 id(s)" in caplog.records[1].getMessage()


# --- the per-device budget of rejected rows ----------------------------------------------------


def test_rejections_over_the_budget_are_counted_not_stored(env: HubEnv) -> None:
    pipeline = env.pipeline(clock=lambda: NOW)
    pipeline.decider.rejections = RejectionTally(rows_per_min=3)
    garbage = [incoming(A, b"\xd2\x84garbage%d" % i) for i in range(10)]
    outcome = pipeline.process(garbage[:4])
    outcome2 = pipeline.process(garbage[4:])
    assert len(outcome.decisions) + len(outcome2.decisions) == 10
    assert len(stored(env)) == 3 and rows(env, "audit") - 1 == 3  # 1: the enrolment entry
    assert len(publishes_on(outcome, wire.RESULT)) + len(publishes_on(outcome2, wire.RESULT)) == 3
    with env.store.reading() as conn:
        assert total_rejections(conn, A) == 10
    assert rows(env, "rejection_count") == 1


def test_the_budget_is_per_minute_and_spares_signed_evidence(env: HubEnv) -> None:
    clock = [NOW]
    pipeline = env.pipeline(clock=lambda: clock[0])
    pipeline.decider.rejections = RejectionTally(rows_per_min=2)
    pipeline.process([incoming(A, b"g1"), incoming(A, b"g2"), incoming(A, b"g3")])
    clock[0] += 60
    pipeline.process([incoming(A, b"g4")])
    assert len(stored(env)) == 3  # two in the first minute, one in the second
    clock[0] += 60
    assert only(pipeline.process([incoming(A, env.evidence(A, env.claims(A, seq=100)))])).status == "affirming"
    for seq in (1, 2, 3):  # signed but below the anti-replay window: rejected, authenticated
        pipeline.process([incoming(A, env.evidence(A, env.claims(A, seq=seq)))])
    statuses = [(v["status"], v["authenticated"], bool(v["evidence"])) for v in stored(env)]
    # signed evidence is evidence: every piece keeps its row and bytes, whatever the budget of unsigned rejections
    assert statuses[-4:] == [("affirming", True, True)] + [("rejected", True, True)] * 3
    with env.store.reading() as conn:
        assert total_rejections(conn, A) == 7


def test_a_batch_that_does_not_commit_counts_nothing(env: HubEnv) -> None:
    pipeline = env.pipeline(clock=lambda: NOW)
    pipeline.decider.rejections.count(A, NOW, False, 10)  # left over from a batch that failed
    pipeline.process([incoming(A, env.evidence(A))])
    with env.store.reading() as conn:
        assert total_rejections(conn, A) == 0


def test_signed_rejections_each_get_a_row_and_a_receipt_whatever_the_budget(env: HubEnv) -> None:
    """A device with a backlog of stale or replayed evidence gets a verdict and a result (its receipt,
    docs/PROTOCOL.md#receipts) for each piece: exactly one verdict per piece it signed, even past the budget."""
    pipeline = env.pipeline(clock=lambda: NOW)
    pipeline.decider.rejections = RejectionTally(rows_per_min=1, bytes_per_min=10)
    only(pipeline.process([incoming(A, env.evidence(A, env.claims(A, seq=100)))]))  # 1..3: below its window
    outcome = pipeline.process([incoming(A, env.evidence(A, env.claims(A, seq=s))) for s in (1, 2, 3)])
    assert [d.reason for d in outcome.decisions] == ["replay"] * 3
    results = publishes_on(outcome, wire.RESULT)
    assert len(results) == 3 and not any(r.retain for r in results)
    from hub.crypto.cose import decode_sign1, verify_sign1

    device = env.device(A)
    for r, seq in zip(results, (1, 2, 3), strict=True):
        message = decode_sign1(r.payload)
        verify_sign1(message, env.keys.public_key)
        assert f"{device.bootcount}:{seq}".encode() in message.payload  # names the evidence's counter
    rows = stored(env)
    assert len(rows) == 4 and all(v["evidence"] for v in rows)  # the affirming one and three rejections, with bytes
    garbage = pipeline.process([incoming(A, b"\xd2" * 30_000)] * 2)  # unsigned: the budget (1 row) applies
    assert len(garbage.decisions) == 2 and len(stored(env)) == 5


def test_messages_not_appraised_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    from hub.server.unknown import dropped_log

    log = dropped_log(interval_s=60.0)
    topic = wire.device_topic(A, wire.EVIDENCE)
    with caplog.at_level(logging.WARNING, logger="hub.server.unknown"):
        for second in range(60):
            log.add([f"{topic}: rate limit exceeded"] * 50, now=float(second))
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("50 message(s) not appraised, on 1 topic(s)") and "rate limit exceeded" in line
    assert log.messages == 59 * 50  # the rest wait for the next line


def test_the_migration_adds_the_columns_and_table_even_on_a_partly_created_schema(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from hub.store.migrate import downgrade, upgrade

    engine = create_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    assert upgrade(engine, "0002") == "0002"
    with engine.begin() as conn:  # a verdict of the release before, and the new table made from the models
        conn.execute(text("INSERT INTO verdict (device_id, scheme, dedup_key, received_at, authenticated, tier, status,"
                          " trust_vector, problems, action, policy_ref, trace_id, evidence) VALUES ('d', 'firmware',"
                          " '1:1', 1.0, 1, 2, 'affirming', '{}', '[]', 'affirm', 'p@1', '', x'a0')"))
        conn.execute(text("CREATE TABLE rejection_count (device_id VARCHAR(64) NOT NULL, minute INTEGER NOT NULL,"
                          " rejected INTEGER NOT NULL, authenticated INTEGER NOT NULL, bytes_received BIGINT NOT NULL,"
                          " PRIMARY KEY (device_id, minute))"))
    assert upgrade(engine, "0003") == "0003"
    with engine.connect() as conn:
        row = conn.execute(text("SELECT evidence, evidence_length, evidence_sha256 FROM verdict")).one()
    assert tuple(row) == (b"\xa0", None, None)
    assert downgrade(engine, "0002") == "0002" and upgrade(engine, "0003") == "0003"
    engine.dispose()
