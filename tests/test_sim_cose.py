"""The simulator's COSE_Sign1 encoder, keys and firmware images, checked independently.

Everything the simulator produces is decoded here with plain cbor2 and verified with
``cryptography`` directly (and cross-checked with pycose), never with device_sim's
own decoder, so an encoder bug cannot be hidden by a matching decoder bug.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pycose.keys.ec2 import EC2Key
from pycose.messages.sign1message import Sign1Message

import device_sim
from device_sim import cose, firmware, keys


def verify_by_hand(raw: bytes, public_key: ec.EllipticCurvePublicKey) -> tuple[dict[int, object], bytes]:
    """Decode a COSE_Sign1 with plain cbor2 and verify it with cryptography: (protected, payload)."""
    tag = cbor2.loads(raw)
    assert isinstance(tag, cbor2.CBORTag) and tag.tag == 18
    protected_bytes, unprotected, payload, signature = tag.value
    assert dict(unprotected) == {}
    assert len(signature) == 64  # raw r || s, not DER
    to_be_signed = cbor2.dumps(["Signature1", protected_bytes, b"", payload])
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public_key.verify(der, to_be_signed, ec.ECDSA(hashes.SHA256()))
    return dict(cbor2.loads(protected_bytes)), payload


def test_sign1_is_tagged_es256_with_kid_and_verifies_by_hand() -> None:
    key = keys.device_private_key("demo", "env-sensor-0001")
    raw = cose.sign1(b"payload", key, b"env-sensor-0001")
    assert raw[0] == 0xD2  # tag 18
    protected, payload = verify_by_hand(raw, key.public_key())
    assert protected == {1: -7, 4: b"env-sensor-0001"}
    assert payload == b"payload"


def test_sign1_cross_checks_with_pycose() -> None:
    key = keys.device_private_key("demo", "smart-meter-0001")
    raw = cose.sign1(b"\xa1\x01\x02", key, b"smart-meter-0001")
    # pycose 1.1 cannot decode tag 18 under cbor2 6: take the parts ourselves.
    protected_bytes, unprotected, payload, signature = cbor2.loads(raw).value
    msg = Sign1Message.from_cose_obj([protected_bytes, dict(unprotected), payload, signature], False)
    nums = key.public_key().public_numbers()
    msg.key = EC2Key(crv="P_256", x=nums.x.to_bytes(32, "big"), y=nums.y.to_bytes(32, "big"))
    assert msg.verify_signature()


def test_verifier_accepts_a_pycose_message() -> None:
    key = keys.device_private_key("demo", "hub")
    nums = key.private_numbers()
    msg = Sign1Message(phdr={1: -7, 4: b"hub"}, payload=b"x")
    msg.key = EC2Key(
        crv="P_256",
        d=nums.private_value.to_bytes(32, "big"),
        x=nums.public_numbers.x.to_bytes(32, "big"),
        y=nums.public_numbers.y.to_bytes(32, "big"),
    )
    parts = cose.verify_sign1(msg.encode(), key.public_key())
    assert (parts.alg, parts.kid, parts.payload) == (-7, b"hub", b"x")


def _tagged(protected: bytes, unprotected: dict[int, object], payload: bytes, sig: bytes) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, sig]))


def test_verifier_rejections() -> None:
    key = keys.device_private_key("demo", "a")
    other = keys.device_private_key("demo", "b")
    good = cose.sign1(b"p", key, b"a")
    protected_bytes, _, payload, sig = cbor2.loads(good).value

    def reason(raw: bytes) -> str:
        with pytest.raises(cose.CoseError) as info:
            cose.verify_sign1(raw, key.public_key())
        return info.value.reason

    assert cose.verify_sign1(good, key.public_key()).payload == b"p"
    with pytest.raises(cose.CoseError, match="forged"):
        cose.verify_sign1(good, other.public_key())
    assert reason(_tagged(protected_bytes, {}, b"q", sig)) == "forged"  # payload changed
    assert reason(good + b"\x00") == "malformed"  # trailing bytes
    assert reason(cbor2.dumps([protected_bytes, {}, payload, sig])) == "malformed"  # untagged
    assert reason(_tagged(cbor2.dumps({4: b"a"}), {1: -7}, payload, sig)) == "forged"  # alg unprotected
    assert reason(_tagged(protected_bytes, {}, payload, sig[:63])) == "forged"
    assert reason(cbor2.dumps(cbor2.CBORTag(35, "a+"))) == "malformed"
    assert reason(b"\xff\x00") == "malformed"


def test_keys_are_deterministic_per_seed_and_device() -> None:
    a = keys.device_private_key("demo", "env-sensor-0001").private_numbers().private_value
    assert a == keys.device_private_key("demo", "env-sensor-0001").private_numbers().private_value
    assert a != keys.device_private_key("other", "env-sensor-0001").private_numbers().private_value
    assert a != keys.device_private_key("demo", "env-sensor-0002").private_numbers().private_value
    assert a != keys.forged_private_key("demo", "env-sensor-0001").private_numbers().private_value
    assert 1 <= a < keys.P256_ORDER
    ueid = keys.device_ueid("demo", "env-sensor-0001")
    assert len(ueid) == 17 and ueid[0] == 0x01
    assert ueid == keys.device_ueid("demo", "env-sensor-0001") != keys.device_ueid("demo", "env-sensor-0002")
    pem = keys.public_key_pem(keys.device_private_key("demo", "x"))
    assert isinstance(serialization.load_pem_public_key(pem), ec.EllipticCurvePublicKey)


def test_hub_key_loading() -> None:
    pem = keys.public_key_pem(keys.device_private_key("demo", "hub"))
    assert isinstance(keys.load_hub_public_key(pem), ec.EllipticCurvePublicKey)
    with pytest.raises(keys.HubKeyError):
        keys.load_hub_public_key(b"not a key")


def test_firmware_images_follow_the_documented_formula() -> None:
    label = b"env-sensor/app/1.2.0"
    expected = b"".join(hashlib.sha256(label + i.to_bytes(4, "big")).digest() for i in range(128))
    assert firmware.image_bytes("env-sensor", "app", "1.2.0") == expected
    assert len(expected) == firmware.IMAGE_SIZE == 4096
    assert firmware.image_digest("env-sensor", "app", "1.2.0") == hashlib.sha256(expected).digest()
    assert firmware.image_digest("env-sensor", "app", "1.2.0", tampered=True) != hashlib.sha256(expected).digest()
    assert firmware.components("env-sensor") == ("bootloader", "app")
    assert firmware.components("smart-meter") == ("bootloader", "rtos", "metering-app")
    assert [(r.version, r.svn) for r in firmware.RELEASES] == [("1.0.0", 1), ("1.1.0", 2), ("1.2.0", 3)]
    with pytest.raises(firmware.UnknownFirmwareError):
        firmware.image_bytes("env-sensor", "rtos", "1.2.0")
    with pytest.raises(firmware.UnknownFirmwareError):
        firmware.components("toaster")


def test_write_images_tree(tmp_path: Path) -> None:
    written = firmware.write_images(tmp_path)
    assert len(written) == 3 * (2 + 3)
    path = tmp_path / "smart-meter" / "1.1.0" / "rtos.bin"
    assert path.read_bytes() == firmware.image_bytes("smart-meter", "rtos", "1.1.0")


def test_signature_fails_when_a_bit_flips() -> None:
    key = keys.device_private_key("demo", "env-sensor-0001")
    raw = bytearray(cose.sign1(b"payload", key, b"k"))
    raw[-1] ^= 1
    with pytest.raises(InvalidSignature):
        verify_by_hand(bytes(raw), key.public_key())


def test_public_names_are_pinned() -> None:
    assert sorted(device_sim.__all__) == [
        "Command",
        "CommandOutcome",
        "Epoch",
        "EvidenceKind",
        "EvidenceRecord",
        "Fleet",
        "FleetError",
        "Profile",
        "Rejection",
        "SimDevice",
        "build_fleet",
        "enrolment",
        "parse_mix",
    ]


def test_simulator_imports_nothing_from_hub_but_wire() -> None:
    code = "import sys, device_sim, device_sim.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'hub'))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "['hub', 'hub.wire']"
