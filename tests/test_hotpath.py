"""The evidence hot path's shortcuts give exactly what the general code gives.

* the fixed SQL (hub/store/hotsql.py) reads device rows typed as SQLAlchemy reads them, writes one
  executemany per table, and turns driver errors into ``StoreError``;
* results and commands signed with a prepared ``Signer`` carry the same protected header and payload
  as ``messages.sign_result`` / ``Command.sign`` and verify with the hub key (RFC 9052 §4.4);
* the memo of measured components returns what a fresh decode returns and never keeps a bad encoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from helpers import HubEnv, component, env_fixture, incoming, only, publishes_on
from sqlalchemy import select

from hub import wire
from hub.appraisal.messages import Command, ResultClaims, sign_result
from hub.appraisal.operations import revoke
from hub.crypto.cose import Signer
from hub.reference.trust import Tier, TrustVector
from hub.schemes.base import EvidenceError
from hub.schemes.firmware import COMPONENT_MEMO_MAX, FirmwareScheme, MeasuredComponent, _component
from hub.store import StoreError
from hub.store.db import DEVICES

A = "smart-meter-0001"


env = env_fixture(A)


def _sign1(raw: bytes) -> list[Any]:
    """COSE_Sign1 = #6.18([protected: bstr, unprotected: map, payload: bstr, signature: bstr]) (RFC 9052 §4.2)."""
    item = cbor2.loads(raw)
    assert isinstance(item, cbor2.CBORTag) and item.tag == 18
    body = list(item.value)
    assert len(body) == 4 and isinstance(body[0], bytes) and len(body[1]) == 0
    assert isinstance(body[2], bytes) and isinstance(body[3], bytes) and len(body[3]) == 64
    return body


def _verifies(env: HubEnv, body: list[Any]) -> bool:
    to_be_signed = cbor2.dumps(["Signature1", body[0], b"", body[2]])  # Sig_structure, RFC 9052 §4.4
    signature = encode_dss_signature(int.from_bytes(body[3][:32], "big"), int.from_bytes(body[3][32:], "big"))
    key = env.keys.public_key
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(signature, to_be_signed, ec.ECDSA(hashes.SHA256()))
    except Exception:
        return False
    return True


# --- signing ---------------------------------------------------------------------------


def test_a_result_from_the_pipeline_has_sign_results_header_and_verifies(env: HubEnv) -> None:
    outcome = env.pipeline().process([incoming(A, env.evidence(A))])
    body = _sign1(publishes_on(outcome, wire.RESULT)[0].payload)
    claims = cbor2.loads(body[2])
    reference = ResultClaims(A, "firmware", TrustVector(), Tier.AFFIRMING, claims[wire.IAT], (), "1:1", None,
                             "p", "affirm")
    expected = _sign1(sign_result(reference, env.keys.signing_key, env.keys.kid))
    assert body[0] == expected[0] and len(body[1]) == len(expected[1]) == 0
    assert cbor2.loads(body[0])[wire.HDR_KID] == env.keys.kid
    assert _verifies(env, body)
    tampered = [body[0], body[1], body[2] + b"\x00", body[3]]
    assert not _verifies(env, tampered)


def test_a_command_from_the_pipeline_has_command_signs_header_and_verifies(env: HubEnv) -> None:
    claims = env.claims(A)
    claims[wire.OEMBOOT] = False  # secure boot off: quarantined, a command goes out
    outcome = env.pipeline().process([incoming(A, env.evidence(A, claims))])
    assert only(outcome).action == "quarantine"
    body = _sign1(publishes_on(outcome, wire.COMMAND)[0].payload)
    expected = _sign1(Command(A, "quarantine", 1, 0, 1).sign(env.keys.signing_key, env.keys.kid))
    assert body[0] == expected[0] and _verifies(env, body)
    assert cbor2.loads(body[2])[wire.CMD_TYPE] == "quarantine"


# --- the component memo ------------------------------------------------------------------


def test_the_component_memo_returns_what_a_fresh_decode_returns() -> None:
    entry = component("bootloader", "1.0", b"\x11" * 32)
    memo: dict[bytes, MeasuredComponent] = {}
    first = _component(entry, memo)
    assert first == _component(entry) == MeasuredComponent("bootloader", "1.0", b"\x11" * 32)
    assert _component(entry, memo) is first and list(memo) == [entry[1]]
    other = component("bootloader", "1.0", b"\x22" * 32)  # another digest: another entry, not the cached one
    assert _component(other, memo).digest == b"\x22" * 32


def test_a_bad_component_is_refused_every_time_and_never_kept() -> None:
    bad = [wire.MC_CONTENT_FORMAT, cbor2.dumps({wire.MC_ID: ["x"], wire.MC_MEASUREMENT: [wire.SHA256, b"short"]})]
    memo: dict[bytes, MeasuredComponent] = {}
    for _ in range(2):
        with pytest.raises(EvidenceError, match="32 bytes"):
            _component(bad, memo)
    assert memo == {}


def test_the_component_memo_is_bounded() -> None:
    memo: dict[bytes, MeasuredComponent] = {}
    for index in range(COMPONENT_MEMO_MAX + 10):
        _component(component("c", None, index.to_bytes(32, "big")), memo)
    assert len(memo) <= COMPONENT_MEMO_MAX


def test_the_firmware_scheme_keeps_its_memo_per_instance() -> None:
    one, two = FirmwareScheme(), FirmwareScheme()
    assert one._components is not two._components


# --- the fixed SQL -----------------------------------------------------------------------


def test_device_rows_read_by_the_fixed_sql_equal_sqlalchemys(env: HubEnv) -> None:
    env.pipeline().process([incoming(A, env.evidence(A))])
    with env.store.transaction() as conn:
        conn.execute(DEVICES.update().where(DEVICES.c.device_id == A).values(
            revoked=False, quarantine_hold=True, anomaly_hold=True, chain_head=b"\x01\x02"))
    with env.store.reading() as conn:
        fast = env.store.devices(conn, [A, "not-enrolled"])
        slow = conn.execute(select(DEVICES).where(DEVICES.c.device_id == A)).one()._mapping
    assert list(fast) == [A]
    record = fast[A]
    for name, value in record.values().items():
        assert value == slow[name] and type(value) is type(slow[name]), name
    assert record.quarantine_hold is True and record.chain_head == b"\x01\x02" and type(record.ueid) is bytes


def test_a_batch_writes_one_statement_per_table(env: HubEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    others = [env.add_device(f"smart-meter-00{i:02d}").device_id for i in range(10, 14)]
    claims = env.claims(others[0])
    claims[wire.OEMBOOT] = False  # one quarantine: a command row too
    batch = [incoming(d, env.evidence(d)) for d in [A, *others[1:]]]
    batch.append(incoming(others[0], env.evidence(others[0], claims)))
    hot = env.store.hot
    calls: list[tuple[str, int]] = []
    real = hot.executemany

    def recording(conn: Any, sql: str, rows: Any) -> int:
        calls.append((sql, len(rows)))
        return real(conn, sql, rows)

    monkeypatch.setattr(hot, "executemany", recording)
    outcome = env.pipeline().process(batch)
    assert sorted(d.status for d in outcome.decisions) == ["affirming"] * 4 + ["contraindicated"]
    tables = [sql.split()[2] if sql.startswith("INSERT") else sql.split()[1] for sql, _ in calls]
    assert sorted(tables) == ["audit", "command", "device", "verdict"]  # one executemany per table
    assert dict(zip(tables, (n for _, n in calls), strict=True))["verdict"] == 5
    assert dict(zip(tables, (n for _, n in calls), strict=True))["device"] == 5


def test_a_driver_error_on_the_hot_path_is_a_store_error(env: HubEnv) -> None:
    with env.store.transaction() as conn:
        conn.exec_driver_sql("DROP TABLE verdict")
    with pytest.raises(StoreError, match="verdict"):
        env.pipeline().process([incoming(A, env.evidence(A))])


@pytest.mark.postgres
def test_device_rows_on_postgresql_are_typed_like_sqlite(env: HubEnv, tmp_path: Path) -> None:
    from tests.e2e import fresh_pg_database
    from tests.helpers import new_store

    store = new_store(tmp_path / "pg-hub", fresh_pg_database())
    try:
        with env.store.reading() as conn:
            record = env.store.devices(conn, [A])[A]
        record.quarantine_hold, record.chain_head = True, b"\x00\xff"
        with store.transaction() as conn:
            store.insert_devices(conn, [record])
        with store.transaction() as conn:
            locked = store.devices(conn, [A, "absent"], lock=True)
            assert locked[A] == record and type(locked[A].ueid) is bytes and locked[A].quarantine_hold is True
            record.seq, record.anomaly_hold = 7, True
            store.save_devices(conn, [record], {A: locked[A].snapshot()})
            store.insert_verdicts(conn, [{**_verdict_row(A), "dedup_key": "1:7"}] * 2)  # second: ignored
        with store.reading() as conn:
            assert store.devices(conn, [A])[A] == record
            assert store.existing_evidence(conn, [(A, "firmware", "1:7"), (A, "firmware", "1:8")]) == {
                (A, "firmware", "1:7")}
            assert store.count_verdicts(conn) == 1
            assert store.verdict_for(conn, A, "firmware", "1:7") is not None
    finally:
        store.close()


def _verdict_row(device_id: str) -> dict[str, Any]:
    return {"device_id": device_id, "scheme": "firmware", "dedup_key": "", "received_at": 1.0,
            "authenticated": True, "tier": 2, "status": "affirming", "trust_vector": "{}", "problems": "[]",
            "action": "affirm", "firmware_version": None, "manifest_ref": None, "policy_ref": "p", "trace_id": "",
            "evidence": b"\x01"}


# --- deciding outside the write lock ---------------------------------------------------------


def _meddle_before_commit(env: HubEnv, monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """Run ``change`` (a commit of its own) after the batch was decided, just before its transaction."""
    real = env.store.transaction
    pending = [change]

    @contextmanager
    def meddling() -> Iterator[Any]:
        if pending:
            pending.pop()()
        with real() as conn:
            yield conn

    monkeypatch.setattr(env.store, "transaction", meddling)


def test_results_and_commands_are_signed_outside_the_write_lock(env: HubEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = env.pipeline()
    pipeline.process([incoming(A, env.evidence(A))])  # the row is cached from here on
    locked = [False]
    signed_under_lock: list[bool] = []
    real_transaction, real_sign = env.store.transaction, Signer.sign

    @contextmanager
    def flagged() -> Iterator[Any]:
        with real_transaction() as conn:
            locked[0] = True
            try:
                yield conn
            finally:
                locked[0] = False

    def sign(self: Signer, payload: bytes) -> bytes:
        signed_under_lock.append(locked[0])
        return real_sign(self, payload)

    monkeypatch.setattr(env.store, "transaction", flagged)
    monkeypatch.setattr(Signer, "sign", sign)
    claims = env.claims(A)
    claims[wire.OEMBOOT] = False
    outcome = pipeline.process([incoming(A, env.evidence(A, claims))])
    assert only(outcome).action == "quarantine" and pipeline.conflicts == 0
    assert signed_under_lock == [False, False]  # the result and the quarantine command


def test_a_revocation_between_deciding_and_committing_is_decided_again_under_the_lock(
        env: HubEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = env.pipeline()
    pipeline.process([incoming(A, env.evidence(A))])
    _meddle_before_commit(env, monkeypatch, lambda: revoke(env.store, A, "compromised", actor="test"))
    decision = only(pipeline.process([incoming(A, env.evidence(A))]))
    assert pipeline.conflicts == 1
    assert decision.status == "rejected" and decision.reason == "revoked"
    assert env.device(A).seq == 1 and [v["status"] for v in env.verdicts(A)] == ["affirming", "rejected"]


def test_evidence_decided_by_another_worker_meanwhile_gets_no_second_verdict(
        env: HubEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, other = env.pipeline(), env.pipeline()
    pipeline.process([incoming(A, env.evidence(A))])
    message = incoming(A, env.evidence(A))
    _meddle_before_commit(env, monkeypatch, lambda: other.process([message]) and None)
    decision = only(pipeline.process([message]))
    assert pipeline.conflicts == 1 and decision.status == "duplicate"
    assert [v["status"] for v in env.verdicts(A)] == ["affirming", "affirming"]


def test_a_challenge_nonce_used_meanwhile_is_refused(env: HubEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = env.pipeline()
    nonce = env.challenge(A)

    def use() -> None:
        with env.store.transaction() as conn:
            assert env.store.use_nonce(conn, nonce, A, 0.0)

    _meddle_before_commit(env, monkeypatch, use)
    decision = only(pipeline.process([incoming(A, env.evidence(A, env.claims(A, nonce=nonce)))]))
    assert pipeline.conflicts == 1
    assert decision.status == "rejected" and decision.reason == "nonce-reused"


def test_one_challenge_nonce_twice_in_one_batch_is_used_once(env: HubEnv) -> None:
    nonce = env.challenge(A)
    batch = [incoming(A, env.evidence(A, env.claims(A, nonce=nonce))) for _ in range(2)]
    pipeline = env.pipeline()
    outcome = pipeline.process(batch)
    assert [d.status for d in outcome.decisions] == ["affirming", "rejected"]
    assert outcome.decisions[1].reason == "nonce-reused" and pipeline.conflicts == 0


def test_rows_are_written_by_column_name_whatever_their_order(env: HubEnv) -> None:
    row = {**_verdict_row(A), "dedup_key": "9:9", "trace_id": "t-1"}
    reordered = dict(reversed(list(row.items())))
    with env.store.transaction() as conn:
        env.store.insert_verdicts(conn, [reordered])
    with env.store.reading() as conn:
        stored = env.store.verdict_for(conn, A, "firmware", "9:9")
        history = env.store.verdict_history(conn, A)
    assert stored is not None and stored["policy_ref"] == "p" and stored["action"] == "affirm"
    assert history[0]["trace_id"] == "t-1" and bytes(history[0]["evidence"]) == b"\x01"
