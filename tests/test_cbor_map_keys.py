"""Map keys that Python would equate with integer labels (true == 1, 10.0 == 10) are refused."""

from __future__ import annotations

import cbor2
import pytest

from device_sim.device import SimDevice
from hub import wire
from hub.crypto.cbor_strict import CborError, loads_strict
from hub.crypto.cose import CoseError, decode_sign1, sign1
from hub.crypto.freshness import epoch_nonce
from hub.schemes.base import EvidenceError, TrustAnchor
from hub.schemes.firmware import FirmwareScheme


@pytest.mark.parametrize("key", [True, False, 10.0, 1.5, None])
def test_non_integer_like_keys_are_refused(key: object) -> None:
    with pytest.raises(CborError, match="map key"):
        loads_strict(cbor2.dumps({key: 1}))


def test_boolean_label_cannot_stand_in_for_alg() -> None:
    protected = bytes.fromhex("a2f526") + cbor2.dumps(4)[0:1] + cbor2.dumps(b"d")  # {true: -7, 4: h'64'}
    raw = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, b"\xa0", b"\x00" * 64]))
    with pytest.raises(CoseError):
        decode_sign1(raw)


def test_float_claim_keys_do_not_pass_as_nonce_and_iat() -> None:
    device = SimDevice("env-sensor-0001", "env-sensor")
    nonce = epoch_nonce(b"k" * 32, 1)
    claims = cbor2.loads(decode_sign1(device.make_evidence(nonce)).payload)
    claims[10.0] = claims.pop(wire.NONCE)
    raw = sign1(cbor2.dumps(claims), device.enrolled_key, kid=device.device_id.encode())
    anchor = TrustAnchor(device.device_id, device.device_class, device.enrolled_key.public_key(), device.ueid)
    with pytest.raises(EvidenceError) as info:
        FirmwareScheme().verify(raw, anchor)
    assert info.value.reason == "malformed-cbor"
