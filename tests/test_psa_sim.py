"""The simulator's PSA platforms: token structure (decoded here with cbor2, not the hub) and profiles."""

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

from device_sim import firmware
from device_sim.profiles import MixError, enrolment
from device_sim.psa import PsaProfile, PsaSimDevice, build_psa_fleet, parse_psa_mix, signer_id
from hub import wire

NONCE = b"E" + bytes(range(31))


def _open(device: PsaSimDevice, raw: bytes) -> tuple[dict[int, object], dict[int, object]]:
    """Check the COSE_Sign1 by hand against the device's ENROLLED key; return (protected, claims)."""
    item = cbor2.loads(raw)
    assert isinstance(item, cbor2.CBORTag) and item.tag == 18
    protected_bytes, unprotected, payload, signature = item.value
    assert unprotected == {}
    public = serialization.load_pem_public_key(device.public_key_pem)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public.verify(der, cbor2.dumps(["Signature1", protected_bytes, b"", payload]), ec.ECDSA(hashes.SHA256()))
    return cbor2.loads(protected_bytes), cbor2.loads(payload)


def test_honest_token_follows_rfc_9783() -> None:
    device = PsaSimDevice("psa-sensor-0001", seed="t")
    protected, claims = _open(device, device.make_evidence(NONCE))
    assert protected == {wire.HDR_ALG: wire.ALG_ES256, wire.HDR_KID: device.ueid}
    assert claims[wire.EAT_PROFILE] == "tag:psacertified.org,2023:psa#tfm"
    assert claims[wire.NONCE] == NONCE
    assert len(device.ueid) == 33 and device.ueid[0] == 0x01 and claims[wire.UEID] == device.ueid
    assert claims[wire.PSA_SECURITY_LIFECYCLE] == 0x3000
    implementation_id = claims[wire.PSA_IMPLEMENTATION_ID]
    assert isinstance(implementation_id, bytes) and len(implementation_id) == 32
    assert claims[wire.PSA_CERTIFICATION_REFERENCE] == "1234567890123-12345"
    components = claims[wire.PSA_SOFTWARE_COMPONENTS]
    assert isinstance(components, list)
    assert [c[wire.SWC_MEASUREMENT_TYPE] for c in components] == ["BL2", "PRoT", "ARoT", "NSPE"]
    for comp in components:
        name = comp[wire.SWC_MEASUREMENT_TYPE]
        image = firmware.image_bytes("psa-sensor", name, "1.2.0")
        assert comp[wire.SWC_MEASUREMENT_VALUE] == hashlib.sha256(image).digest()
        assert comp[wire.SWC_VERSION] == "1.2.0" and comp[wire.SWC_SIGNER_ID] == signer_id(name)
    assert signer_id("BL2") == signer_id("ARoT") != signer_id("NSPE")


def test_boot_seed_changes_with_each_boot() -> None:
    device = PsaSimDevice("psa-sensor-0001", seed="t")
    _, first = _open(device, device.make_evidence(NONCE))
    device.reboot()
    _, second = _open(device, device.make_evidence(NONCE))
    assert first[wire.PSA_BOOT_SEED] != second[wire.PSA_BOOT_SEED]


def test_forged_device_signs_with_another_key() -> None:
    device = PsaSimDevice("psa-sensor-0002", PsaProfile.FORGED, seed="t")
    with pytest.raises(InvalidSignature):
        _open(device, device.make_evidence(NONCE))


def test_debug_tampered_and_wrong_nonce_profiles() -> None:
    _, debug = _open(d := PsaSimDevice("psa-sensor-0003", PsaProfile.DEBUG, seed="t"), d.make_evidence(NONCE))
    assert debug[wire.PSA_SECURITY_LIFECYCLE] == wire.PSA_LIFECYCLE_NON_PSA_ROT_DEBUG
    _, tampered = _open(d := PsaSimDevice("psa-sensor-0004", PsaProfile.TAMPERED, seed="t"), d.make_evidence(NONCE))
    nspe = tampered[wire.PSA_SOFTWARE_COMPONENTS][-1]  # type: ignore[index]
    assert nspe[wire.SWC_MEASUREMENT_VALUE] == firmware.image_digest("psa-sensor", "NSPE", "1.2.0", tampered=True)
    _, wrong = _open(d := PsaSimDevice("psa-sensor-0005", PsaProfile.WRONG_NONCE, seed="t"), d.make_evidence(NONCE))
    nonce = wrong[wire.NONCE]
    assert isinstance(nonce, bytes) and nonce != NONCE and len(nonce) == 32


def test_fleet_and_enrolment_of_psa_platforms() -> None:
    devices = build_psa_fleet(5, "honest:2,forged:1,debug:1,tampered:1", seed="t")
    assert [d.device_id for d in devices] == [f"psa-sensor-{i:04d}" for i in range(1, 6)]
    assert sorted(d.psa_profile.value for d in devices) == ["debug", "forged", "honest", "honest", "tampered"]
    entries = enrolment(list(devices))["devices"]
    assert isinstance(entries, list) and all(len(bytes.fromhex(e["ueid"])) == 33 for e in entries)
    assert devices[0].report()["profile"] == devices[0].psa_profile.value
    with pytest.raises(MixError):
        parse_psa_mix("rollback:1")


def test_psa_module_imports_nothing_from_hub_but_wire() -> None:
    code = "import sys, device_sim.psa; print(sorted(m for m in sys.modules if m.split('.')[0] == 'hub'))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "['hub', 'hub.wire']"
