"""COSE_Sign1 (RFC 9052) rules of hub.crypto.cose: each check has a message that fails only that check."""

from __future__ import annotations

from collections.abc import Callable

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from helpers import P256_ORDER, malleate, parts, rebuild, sig_structure, sign_raw

from hub import wire
from hub.crypto.cose import CoseError, decode_sign1, sign1, verify_sign1

PAYLOAD = cbor2.dumps({1: "payload"})
ES256 = {wire.HDR_ALG: wire.ALG_ES256, wire.HDR_KID: b"dev-1"}


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def p384() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def reason(raw: bytes, key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | None = None) -> str:
    """The CoseError reason of decoding (and, with ``key``, verifying) ``raw``."""
    with pytest.raises(CoseError) as info:
        message = decode_sign1(raw)
        if key is not None:
            verify_sign1(message, key)
    return info.value.reason


def test_well_formed_message_verifies(p256: ec.EllipticCurvePrivateKey) -> None:
    raw = sign_raw(PAYLOAD, p256, protected=ES256)
    message = decode_sign1(raw)
    verify_sign1(message, p256.public_key())
    assert message.kid == b"dev-1" and message.payload == PAYLOAD and message.alg == wire.ALG_ES256


def test_hub_signed_messages_verify(p256: ec.EllipticCurvePrivateKey) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    for key in (p256, ed, ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP521R1())):
        verify_sign1(decode_sign1(sign1(PAYLOAD, key, kid=b"hub")), key.public_key())


# --- structure ------------------------------------------------------------------------


def test_untagged_message_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    raw = sign_raw(PAYLOAD, p256, protected=ES256, tag=None)
    assert reason(raw) == "not-cose-sign1"


@pytest.mark.parametrize("tag", [17, 96, 98])  # the CWT tag 61 around tag 18 is accepted: test_cwt_tag.py
def test_other_cose_tags_refused(p256: ec.EllipticCurvePrivateKey, tag: int) -> None:
    raw = sign_raw(PAYLOAD, p256, protected=ES256, tag=tag)
    assert reason(raw) == "malformed-cbor"  # only tag 18 is allowed at the top


@pytest.mark.parametrize("size", [0, 3, 5])
def test_array_of_four_required(p256: ec.EllipticCurvePrivateKey, size: int) -> None:
    body = parts(sign_raw(PAYLOAD, p256, protected=ES256))
    body = [*body, b"extra"][:size]
    assert reason(rebuild(body)) == "not-cose-sign1"


def test_tag_over_a_map_refused() -> None:
    assert reason(cbor2.dumps(cbor2.CBORTag(18, {1: 2}))) == "not-cose-sign1"


def test_protected_must_be_a_byte_string(p256: ec.EllipticCurvePrivateKey) -> None:
    body = parts(sign_raw(PAYLOAD, p256, protected=ES256))
    body[0] = dict(ES256)  # the map itself instead of its encoding
    assert reason(rebuild(body)) == "bad-header"


@pytest.mark.parametrize(
    "encoded", [cbor2.dumps([1, -7]), cbor2.dumps("x"), b"\xa1\x01", cbor2.dumps({1: -7}) + b"\x00"]
)
def test_protected_must_encode_exactly_one_map(p256: ec.EllipticCurvePrivateKey, encoded: bytes) -> None:
    raw = sign_raw(PAYLOAD, p256, protected=encoded)
    assert reason(raw) == "bad-header"


def test_unprotected_must_be_a_map(p256: ec.EllipticCurvePrivateKey) -> None:
    body = parts(sign_raw(PAYLOAD, p256, protected=ES256))
    body[1] = []
    assert reason(rebuild(body)) == "bad-header"


def test_detached_payload_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    body = parts(sign_raw(PAYLOAD, p256, protected=ES256))
    body[2] = None
    assert reason(rebuild(body)) == "detached-payload"


@pytest.mark.parametrize("payload", ["text", 5, [b"x"]])
def test_payload_must_be_a_byte_string(p256: ec.EllipticCurvePrivateKey, payload: object) -> None:
    body = parts(sign_raw(PAYLOAD, p256, protected=ES256))
    body[2] = payload
    assert reason(rebuild(body)) == "bad-payload"


def test_signature_must_be_a_byte_string(p256: ec.EllipticCurvePrivateKey) -> None:
    body = parts(sign_raw(PAYLOAD, p256, protected=ES256))
    body[3] = body[3].hex()
    assert reason(rebuild(body)) == "bad-signature"


def test_trailing_bytes_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    assert reason(sign_raw(PAYLOAD, p256, protected=ES256) + b"\x00") == "trailing-bytes"


# --- header rules ------------------------------------------------------------------------


def test_alg_only_in_unprotected_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    raw = sign_raw(PAYLOAD, p256, protected={wire.HDR_KID: b"dev-1"}, unprotected={wire.HDR_ALG: wire.ALG_ES256})
    assert reason(raw) == "alg-unprotected"


def test_alg_in_both_buckets_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    raw = sign_raw(PAYLOAD, p256, protected=ES256, unprotected={wire.HDR_ALG: wire.ALG_ES256})
    assert reason(raw) == "alg-unprotected"


@pytest.mark.parametrize("protected", [b"", cbor2.dumps({}), cbor2.dumps({wire.HDR_KID: b"dev-1"})])
def test_alg_missing_refused(p256: ec.EllipticCurvePrivateKey, protected: bytes) -> None:
    assert reason(sign_raw(PAYLOAD, p256, protected=protected)) == "alg-missing"


@pytest.mark.parametrize("alg", [-999, 0, -257, "ES256", True, -7.0, b"\xf9"])
def test_unknown_alg_refused(p256: ec.EllipticCurvePrivateKey, alg: object) -> None:
    assert reason(sign_raw(PAYLOAD, p256, protected={wire.HDR_ALG: alg})) == "alg-unsupported"


def test_es256_with_p384_key_refused(p256: ec.EllipticCurvePrivateKey, p384: ec.EllipticCurvePrivateKey) -> None:
    """A message claiming ES256 cannot be checked against a P-384 device key (nor the reverse)."""
    raw = sign_raw(PAYLOAD, p384, protected={wire.HDR_ALG: wire.ALG_ES256}, hash_alg=hashes.SHA256())
    assert reason(raw, p384.public_key()) == "alg-key-mismatch"
    raw = sign_raw(PAYLOAD, p256, protected={wire.HDR_ALG: wire.ALG_ES384}, hash_alg=hashes.SHA384())
    assert reason(raw, p256.public_key()) == "alg-key-mismatch"


def test_eddsa_with_ec_key_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    for alg in (wire.ALG_EDDSA, wire.ALG_ED25519):
        raw = sign_raw(PAYLOAD, ed, protected={wire.HDR_ALG: alg})
        assert reason(raw, p256.public_key()) == "alg-key-mismatch"
    raw = sign_raw(PAYLOAD, p256, protected={wire.HDR_ALG: wire.ALG_ES256})
    assert reason(raw, ed.public_key()) == "alg-key-mismatch"


@pytest.mark.parametrize("bucket", ["protected", "unprotected"])
def test_crit_refused(p256: ec.EllipticCurvePrivateKey, bucket: str) -> None:
    if bucket == "protected":
        raw = sign_raw(PAYLOAD, p256, protected={**ES256, wire.HDR_CRIT: [99]})
    else:
        raw = sign_raw(PAYLOAD, p256, protected=ES256, unprotected={wire.HDR_CRIT: [99]})
    assert reason(raw) == "crit-unknown"


def test_x5chain_unprotected_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    raw = sign_raw(PAYLOAD, p256, protected=ES256, unprotected={wire.HDR_X5CHAIN: b"\x30\x82"})
    assert reason(raw) == "x5chain-unprotected"


@pytest.mark.parametrize("label", [wire.HDR_KID, wire.HDR_CONTENT_TYPE, 99])
def test_label_in_both_buckets_refused(p256: ec.EllipticCurvePrivateKey, label: int) -> None:
    raw = sign_raw(PAYLOAD, p256, protected={**ES256, label: b"a"}, unprotected={label: b"b"})
    assert reason(raw) == "header-duplicate"


def test_kid_must_be_a_byte_string(p256: ec.EllipticCurvePrivateKey) -> None:
    raw = sign_raw(PAYLOAD, p256, protected={wire.HDR_ALG: wire.ALG_ES256, wire.HDR_KID: "dev-1"})
    assert reason(raw) == "bad-header"


def test_unprotected_kid_is_not_the_kid(p256: ec.EllipticCurvePrivateKey) -> None:
    """Key substitution: a kid in the unprotected bucket is never used to name the key."""
    raw = sign_raw(PAYLOAD, p256, protected={wire.HDR_ALG: wire.ALG_ES256}, unprotected={wire.HDR_KID: b"dev-1"})
    assert decode_sign1(raw).kid is None


# --- signature --------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 63, 65, 96])
def test_signature_of_wrong_length_refused(p256: ec.EllipticCurvePrivateKey, length: int) -> None:
    body = parts(sign_raw(PAYLOAD, p256, protected=ES256))
    body[3] = (body[3] * 2)[:length]
    assert reason(rebuild(body), p256.public_key()) == "bad-signature"


def test_ed25519_signature_of_wrong_length_refused() -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    body = parts(sign_raw(PAYLOAD, ed, protected={wire.HDR_ALG: wire.ALG_EDDSA}))
    body[3] = body[3] + b"\x00"
    assert reason(rebuild(body), ed.public_key()) == "bad-signature"


def test_der_signature_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    """A DER-encoded ECDSA signature (valid for the same bytes) is not a COSE signature."""
    protected = cbor2.dumps(ES256)
    der = p256.sign(sig_structure(protected, PAYLOAD), ec.ECDSA(hashes.SHA256()))
    raw = rebuild([protected, {}, PAYLOAD, der])
    assert reason(raw, p256.public_key()) == "bad-signature"


def test_wrong_key_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    assert reason(sign_raw(PAYLOAD, other, protected=ES256), p256.public_key()) == "bad-signature"


Mutation = Callable[[list[object]], None]


def _swap_kid(body: list[object]) -> None:
    body[0] = cbor2.dumps({wire.HDR_ALG: wire.ALG_ES256, wire.HDR_KID: b"dev-2"})


def _reencode_protected(body: list[object]) -> None:
    # the same map, encoded differently (non-minimal integer): the signature covers the bytes as received
    body[0] = b"\xa2\x01\x38\x06\x04\x45dev-1"


def _payload(body: list[object]) -> None:
    body[2] = cbor2.dumps({1: "PAYLOAD"})


def _zero_r(body: list[object]) -> None:
    sig = body[3]
    assert isinstance(sig, bytes)
    body[3] = bytes(32) + sig[32:]


@pytest.mark.parametrize("mutate", [_swap_kid, _reencode_protected, _payload, _zero_r])
def test_tampering_breaks_the_signature(p256: ec.EllipticCurvePrivateKey, mutate: Mutation) -> None:
    body = parts(sign_raw(PAYLOAD, p256, protected=ES256))
    mutate(body)
    assert reason(rebuild(body), p256.public_key()) == "bad-signature"


def test_signature_covers_protected_bytes_as_received(p256: ec.EllipticCurvePrivateKey) -> None:
    """Non-canonical protected bytes that were signed verify; re-encoding them would not."""
    odd = b"\xa2\x01\x38\x06\x04\x45dev-1"  # {1: -7, 4: b"dev-1"} with a 2-byte -7
    message = decode_sign1(sign_raw(PAYLOAD, p256, protected=odd))
    assert message.alg == wire.ALG_ES256
    verify_sign1(message, p256.public_key())


def test_ecdsa_high_s_still_verifies(p256: ec.EllipticCurvePrivateKey) -> None:
    """ECDSA is malleable: s -> n - s gives other bytes that verify. The pipeline must not dedup by bytes
    (see test_pipeline.py::test_malleated_signature_gives_no_second_verdict)."""
    raw = sign_raw(PAYLOAD, p256, protected=ES256)
    twin = malleate(raw)
    assert twin != raw
    verify_sign1(decode_sign1(twin), p256.public_key())


def test_zero_and_out_of_range_scalars_refused(p256: ec.EllipticCurvePrivateKey) -> None:
    body = parts(sign_raw(PAYLOAD, p256, protected=ES256))
    for r, s in ((0, 1), (1, 0), (P256_ORDER, 1), (1, P256_ORDER)):
        body[3] = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        assert reason(rebuild(body), p256.public_key()) == "bad-signature"
    assert encode_dss_signature(1, 1)  # the DER helper itself accepts them; the key check refuses
