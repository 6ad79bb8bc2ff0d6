"""The CWT tag 61 (RFC 8392 section 6) around an EAT's COSE_Sign1, which RFC 9711 section 7.1 allows."""

from __future__ import annotations

import cbor2
import pytest
from helpers import HubEnv, env_fixture, incoming, only

from hub import wire
from hub.crypto.cose import CoseError, decode_sign1

A = "smart-meter-0001"


env = env_fixture(A)


def cwt_wrapped(raw: bytes) -> bytes:
    wrapped = cbor2.dumps(cbor2.CBORTag(wire.CWT_TAG, cbor2.loads(raw)))
    assert wrapped[:3] == b"\xd8\x3d\xd2"  # 61(18([...]))
    return wrapped


def test_firmware_evidence_in_the_cwt_tag_is_accepted(env: HubEnv) -> None:
    decision = only(env.pipeline().process([incoming(A, cwt_wrapped(env.evidence(A)))]))
    assert decision.status == "affirming", decision.problems


def test_the_cwt_tag_around_anything_but_a_cose_sign1_names_it() -> None:
    inner = [b"\xa1\x01\x26", {}, b"payload", bytes(64)]
    with pytest.raises(CoseError) as err:
        decode_sign1(cbor2.dumps(cbor2.CBORTag(wire.CWT_TAG, inner)))
    assert err.value.reason == "not-cose-sign1" and "CWT tag 61" in err.value.detail
    with pytest.raises(CoseError) as err:
        decode_sign1(cbor2.dumps(cbor2.CBORTag(wire.CWT_TAG, cbor2.CBORTag(17, inner))))
    assert "unknown tag 17" in err.value.detail  # COSE_Mac0 inside the CWT tag is not a COSE_Sign1


def test_the_cwt_tag_twice_is_refused() -> None:
    inner = cbor2.CBORTag(wire.COSE_SIGN1_TAG, [b"\xa1\x01\x26", {}, b"payload", bytes(64)])
    with pytest.raises(CoseError) as err:
        decode_sign1(cbor2.dumps(cbor2.CBORTag(wire.CWT_TAG, cbor2.CBORTag(wire.CWT_TAG, inner))))
    assert err.value.reason == "malformed-cbor" and "61" in err.value.detail


def test_a_cwt_wrapped_copy_is_the_same_evidence(env: HubEnv) -> None:
    """The dedup key comes from the signed content: the tag does not make a copy new."""
    raw = env.evidence(A)
    pipeline = env.pipeline()
    assert only(pipeline.process([incoming(A, raw)])).status == "affirming"
    assert only(pipeline.process([incoming(A, cwt_wrapped(raw))])).status == "duplicate"
