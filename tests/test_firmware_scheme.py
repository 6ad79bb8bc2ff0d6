"""The firmware evidence scheme: every claim's type and constraint, identity binding, and appraisal."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import SEED, Claims, anchor_for, component, honest_claims, sign_claims, sign_raw

from device_sim import firmware
from device_sim.device import SimDevice
from device_sim.records import Profile
from hub import wire
from hub.crypto.hubkeys import load_operator_keys
from hub.reference import trust
from hub.reference.manifests import Manifest, verify_manifest
from hub.reference.policy import Policy
from hub.reference.trust import Tier
from hub.schemes.base import AppraisalInputs, DeviceState, EvidenceError
from hub.schemes.base import Claims as EvidenceClaims
from hub.schemes.firmware import FirmwareClaims, FirmwareScheme, MeasuredComponent, appraise_firmware
from hub.server.localhub import DEMO_OPERATOR_KEY, MANIFESTS_DIR

NONCE = b"E" + bytes(31)
SCHEME = FirmwareScheme()


@pytest.fixture(scope="module")
def meter() -> SimDevice:
    return SimDevice("smart-meter-0001", firmware.SMART_METER, seed=SEED)


def verify(device: SimDevice, claims: Claims) -> EvidenceClaims:
    return SCHEME.verify(sign_claims(claims, device.enrolled_key, device.device_id), anchor_for(device))


def error(device: SimDevice, claims: Claims) -> EvidenceError:
    with pytest.raises(EvidenceError) as info:
        verify(device, claims)
    return info.value


def test_honest_evidence_verifies(meter: SimDevice) -> None:
    claims = SCHEME.verify(meter.make_evidence(NONCE), anchor_for(meter))
    body = claims.body
    assert isinstance(body, FirmwareClaims)
    assert claims.device_id == meter.device_id and claims.nonce == NONCE
    assert claims.dedup_key == f"{meter.bootcount}:1" and claims.counter == (meter.bootcount, 1)
    assert body.swversion == "1.2.0" and body.hwmodel == "smart-meter" and len(body.components) == 3


# --- claims: (mutation, expected reason) -------------------------------------------------

Mutator = Callable[[Claims], None]


def _set(key: int, value: object) -> Mutator:
    return lambda c: c.__setitem__(key, value)


def _drop(key: int) -> Mutator:
    return lambda c: c.pop(key)


def _measure(entries: list[object]) -> Mutator:
    return lambda c: c.__setitem__(wire.MEASUREMENTS, entries)


def _raw_component(value: object) -> Mutator:
    return _measure([[wire.MC_CONTENT_FORMAT, cbor2.dumps(value)]])


DIGEST = bytes(32)
CLAIM_CASES: dict[str, tuple[Mutator, str]] = {
    "profile-missing": (_drop(wire.EAT_PROFILE), "wrong-profile"),
    "profile-other": (_set(wire.EAT_PROFILE, wire.PSA_PROFILE), "wrong-profile"),
    "nonce-missing": (_drop(wire.NONCE), "missing-claim"),
    "nonce-text": (_set(wire.NONCE, "E" * 32), "bad-claim"),
    "ueid-missing": (_drop(wire.UEID), "missing-claim"),
    "ueid-text": (_set(wire.UEID, "01" * 16), "bad-claim"),
    "ueid-too-short": (_set(wire.UEID, b"\x01" * 6), "bad-claim"),
    "ueid-too-long": (_set(wire.UEID, b"\x01" * 34), "bad-claim"),
    "hwmodel-missing": (_drop(wire.HWMODEL), "missing-claim"),
    "hwmodel-text": (_set(wire.HWMODEL, "smart-meter"), "bad-claim"),
    "hwmodel-not-utf8": (_set(wire.HWMODEL, b"\xff\xfe"), "bad-claim"),
    "oemboot-missing": (_drop(wire.OEMBOOT), "missing-claim"),
    "oemboot-int": (_set(wire.OEMBOOT, 1), "bad-claim"),
    "dbgstat-missing": (_drop(wire.DBGSTAT), "missing-claim"),
    "dbgstat-5": (_set(wire.DBGSTAT, 5), "bad-claim"),
    "dbgstat-negative": (_set(wire.DBGSTAT, -1), "bad-claim"),
    "dbgstat-bool": (_set(wire.DBGSTAT, False), "bad-claim"),
    "bootcount-missing": (_drop(wire.BOOTCOUNT), "missing-claim"),
    "bootcount-negative": (_set(wire.BOOTCOUNT, -1), "bad-claim"),
    "bootcount-huge": (_set(wire.BOOTCOUNT, 2**63), "bad-claim"),
    "bootcount-float": (_set(wire.BOOTCOUNT, 1.0), "bad-claim"),
    "seq-missing": (_drop(wire.EVIDENCE_SEQ), "missing-claim"),
    "seq-negative": (_set(wire.EVIDENCE_SEQ, -5), "bad-claim"),
    "seq-bool": (_set(wire.EVIDENCE_SEQ, True), "bad-claim"),
    "iat-float": (_set(wire.IAT, 1.5e9), "bad-claim"),
    "swversion-missing": (_drop(wire.SWVERSION), "missing-claim"),
    "swversion-text": (_set(wire.SWVERSION, "1.2.0"), "bad-claim"),
    "swversion-empty": (_set(wire.SWVERSION, []), "bad-claim"),
    "swversion-three": (_set(wire.SWVERSION, ["1.2.0", 1, 2]), "bad-claim"),
    "swversion-int": (_set(wire.SWVERSION, [120]), "bad-claim"),
    "measurements-missing": (_drop(wire.MEASUREMENTS), "missing-claim"),
    "measurements-map": (_set(wire.MEASUREMENTS, {}), "bad-claim"),
    "measurements-empty": (_measure([]), "bad-claim"),
    "measurements-33": (_measure([component(f"c{i}", "1", DIGEST) for i in range(33)]), "bad-claim"),
    "measurement-not-pair": (_measure([[wire.MC_CONTENT_FORMAT]]), "bad-claim"),
    "measurement-format": (_measure([[60, cbor2.dumps({})]]), "bad-claim"),
    "measurement-not-bstr": (_measure([[wire.MC_CONTENT_FORMAT, {1: ["a"], 2: [-16, DIGEST]}]]), "bad-claim"),
    "measurement-bad-cbor": (_measure([[wire.MC_CONTENT_FORMAT, b"\xa1\x01"]]), "bad-claim"),
    "measurement-tagged": (_measure([[wire.MC_CONTENT_FORMAT, cbor2.dumps(cbor2.CBORTag(35, "a"))]]), "bad-claim"),
    "component-not-map": (_raw_component([1, 2]), "bad-claim"),
    "component-no-id": (_raw_component({2: [-16, DIGEST]}), "missing-claim"),
    "component-no-digest": (_raw_component({1: ["app", "1"]}), "missing-claim"),
    "component-id-empty": (_raw_component({1: [], 2: [-16, DIGEST]}), "bad-claim"),
    "component-id-three": (_raw_component({1: ["a", "1", "x"], 2: [-16, DIGEST]}), "bad-claim"),
    "component-name-int": (_raw_component({1: [5], 2: [-16, DIGEST]}), "bad-claim"),
    "component-version-int": (_raw_component({1: ["a", 1], 2: [-16, DIGEST]}), "bad-claim"),
    "component-sha512": (_raw_component({1: ["a"], 2: [-44, bytes(64)]}), "bad-claim"),
    "component-short-digest": (_raw_component({1: ["a"], 2: [-16, bytes(31)]}), "bad-claim"),
    "component-digest-text": (_raw_component({1: ["a"], 2: [-16, "00" * 32]}), "bad-claim"),
    "processes-text": (_set(wire.RUNTIME_PROCESSES, "init"), "bad-claim"),
    "processes-int-item": (_set(wire.RUNTIME_PROCESSES, ["init", 1]), "bad-claim"),
    "processes-257": (_set(wire.RUNTIME_PROCESSES, ["p"] * 257), "bad-claim"),
    "endpoints-bytes": (_set(wire.RUNTIME_ENDPOINTS, [b"10.0.0.1"]), "bad-claim"),
}


@pytest.mark.parametrize("case", sorted(CLAIM_CASES))
def test_claim_type_and_constraint(meter: SimDevice, case: str) -> None:
    mutate, expected = CLAIM_CASES[case]
    claims = honest_claims(meter, NONCE, 1)
    mutate(claims)
    err = error(meter, claims)
    assert err.reason == expected, err
    assert err.authenticated  # signed by the device: its own fault


def test_optional_claims_absent_or_well_typed_verify(meter: SimDevice) -> None:
    claims = honest_claims(meter, NONCE, 1)
    claims.pop(wire.IAT)
    claims[wire.RUNTIME_PROCESSES] = ["init", "meterd"]
    claims[wire.RUNTIME_ENDPOINTS] = []
    claims[99_999] = "an unknown claim is ignored"
    result = verify(meter, claims)
    assert result.issued_at is None


@pytest.mark.parametrize("payload", [cbor2.dumps([1, 2]), b"\xa1\x01", cbor2.dumps({1: 1}) + b"\x00"])
def test_payload_must_be_one_claims_map(meter: SimDevice, payload: bytes) -> None:
    raw = sign_raw(payload, meter.enrolled_key,
                   protected={wire.HDR_ALG: wire.ALG_ES256, wire.HDR_KID: meter.device_id.encode()})
    with pytest.raises(EvidenceError) as info:
        SCHEME.verify(raw, anchor_for(meter))
    assert info.value.reason in ("bad-claims", "malformed-cbor", "trailing-bytes") and info.value.authenticated


# --- identity -------------------------------------------------------------------------


def test_kid_mismatch_refused(meter: SimDevice) -> None:
    """Device A's genuine evidence checked as device B's (A's evidence on B's topic)."""
    other = SimDevice("smart-meter-0002", firmware.SMART_METER, seed=SEED)
    with pytest.raises(EvidenceError) as info:
        SCHEME.verify(meter.make_evidence(NONCE), anchor_for(other))
    assert info.value.reason == "kid-mismatch" and not info.value.authenticated


def test_kid_only_in_unprotected_refused(meter: SimDevice) -> None:
    raw = sign_raw(cbor2.dumps(honest_claims(meter, NONCE, 1)), meter.enrolled_key,
                   protected={wire.HDR_ALG: wire.ALG_ES256}, unprotected={wire.HDR_KID: meter.device_id.encode()})
    with pytest.raises(EvidenceError) as info:
        SCHEME.verify(raw, anchor_for(meter))
    assert info.value.reason == "kid-mismatch"


def test_key_comes_from_the_anchor_not_the_message(meter: SimDevice) -> None:
    """A forged device signs with its own key and names itself: the enrolled key refuses it."""
    forged = SimDevice(meter.device_id, firmware.SMART_METER, Profile.FORGED, seed=SEED)
    with pytest.raises(EvidenceError) as info:
        SCHEME.verify(forged.make_evidence(NONCE), anchor_for(meter))
    assert info.value.reason == "bad-signature" and not info.value.authenticated


def test_ueid_mismatch_refused(meter: SimDevice) -> None:
    claims = honest_claims(meter, NONCE, 1)
    claims[wire.UEID] = b"\x01" + bytes(16)
    assert error(meter, claims).reason == "ueid-mismatch"


def test_no_key_refused(meter: SimDevice) -> None:
    anchor = dataclasses.replace(anchor_for(meter), public_key=None)
    with pytest.raises(EvidenceError) as info:
        SCHEME.verify(meter.make_evidence(NONCE), anchor)
    assert info.value.reason == "no-key"


def test_oversized_evidence_refused(meter: SimDevice) -> None:
    claims = honest_claims(meter, NONCE, 1)
    claims[99_999] = b"x" * 17_000
    assert error(meter, claims).reason == "too-large"


def test_p384_key_with_es256_header_refused() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    device = SimDevice("smart-meter-0003", firmware.SMART_METER, seed=SEED)
    anchor = dataclasses.replace(anchor_for(device), public_key=key.public_key())
    raw = sign_claims(honest_claims(device, NONCE, 1), key, device.device_id)  # header says ES256
    with pytest.raises(EvidenceError) as info:
        SCHEME.verify(raw, anchor)
    assert info.value.reason == "alg-key-mismatch"


# --- appraisal -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    keys = load_operator_keys((str(DEMO_OPERATOR_KEY),))
    return verify_manifest((MANIFESTS_DIR / "smart-meter" / "manifest.cose").read_bytes(), keys)


def body_for(version: str = "1.2.0", **changes: object) -> FirmwareClaims:
    comps = tuple(MeasuredComponent(m.name, m.version, m.digest)
                  for m in firmware.measurements(firmware.SMART_METER, version))
    base = FirmwareClaims(ueid=b"\x01" * 17, hwmodel="smart-meter", secure_boot=True, dbgstat=wire.DBG_DISABLED,
                          bootcount=1, seq=1, swversion=version, components=comps)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def appraise(body: FirmwareClaims, manifest: Manifest | None, policy: Policy | None = None,
             state: DeviceState | None = None) -> tuple[Tier, tuple[str, ...], trust.TrustVector]:
    result = appraise_firmware(body, AppraisalInputs(manifest, policy or Policy("smart-meter"), state or DeviceState()))
    return result.trust_vector.tier(), result.problems, result.trust_vector


def with_status(manifest: Manifest, version: str, status: str) -> Manifest:
    releases = tuple(dataclasses.replace(r, status=status) if r.version == version else r for r in manifest.releases)
    return dataclasses.replace(manifest, releases=releases)


def test_approved_release_affirmed_and_raises_svn_high_water(manifest: Manifest) -> None:
    result = appraise_firmware(body_for(), AppraisalInputs(manifest, Policy("smart-meter"), DeviceState()))
    assert result.trust_vector.tier() is Tier.AFFIRMING and result.problems == ()
    assert result.state_updates == {"svn_high_water": 3}


def test_unknown_digest_contraindicated(manifest: Manifest) -> None:
    comps = firmware.measurements(firmware.SMART_METER, "1.2.0", tampered=True)
    body = body_for(components=tuple(MeasuredComponent(m.name, m.version, m.digest) for m in comps))
    tier, problems, vector = appraise(body, manifest)
    assert tier is Tier.CONTRAINDICATED and vector.executables == trust.EXEC_CONTRAINDICATED
    assert any("is in no manifest" in p for p in problems)


def test_version_not_in_manifest(manifest: Manifest) -> None:
    tier, problems, _ = appraise(body_for(swversion="9.9.9"), manifest)
    assert tier is Tier.CONTRAINDICATED and any("not a release" in p for p in problems)


def test_component_missing(manifest: Manifest) -> None:
    body = body_for()
    tier, problems, _ = appraise(dataclasses.replace(body, components=body.components[:2]), manifest)
    assert tier is Tier.CONTRAINDICATED and any("was not measured" in p for p in problems)


def test_extra_component(manifest: Manifest) -> None:
    body = body_for()
    extra = MeasuredComponent("backdoor", "1.2.0", body.components[0].digest)
    tier, problems, _ = appraise(dataclasses.replace(body, components=(*body.components, extra)), manifest)
    assert tier is Tier.CONTRAINDICATED and any("not part of release" in p for p in problems)


def test_component_from_another_release(manifest: Manifest) -> None:
    """Mix and match: the 1.0.0 bootloader (a known digest) inside a 1.2.0 claim."""
    old = firmware.image_digest(firmware.SMART_METER, "bootloader", "1.0.0")
    body = body_for()
    comps = tuple(MeasuredComponent(c.name, c.version, old) if c.name == "bootloader" else c for c in body.components)
    tier, problems, _ = appraise(dataclasses.replace(body, components=comps), manifest)
    assert tier is Tier.CONTRAINDICATED and any("from another release" in p for p in problems)


def test_rollback_below_manifest_min_svn(manifest: Manifest) -> None:
    tier, problems, _ = appraise(body_for("1.0.0"), manifest)  # svn 1 < min_svn 2
    assert tier is Tier.CONTRAINDICATED and any("rollback" in p and "minimum" in p for p in problems)


def test_rollback_below_policy_min_svn(manifest: Manifest) -> None:
    tier, problems, _ = appraise(body_for("1.1.0"), manifest, Policy("smart-meter", min_svn=3))
    assert tier is Tier.CONTRAINDICATED and any("minimum 3" in p for p in problems)


def test_rollback_below_device_svn_high_water(manifest: Manifest) -> None:
    """1.1.0 (svn 2) is approved and above min_svn, but this device already proved svn 3."""
    assert appraise(body_for("1.1.0"), manifest)[0] is Tier.AFFIRMING
    tier, problems, _ = appraise(body_for("1.1.0"), manifest, state=DeviceState(svn_high_water=3))
    assert tier is Tier.CONTRAINDICATED and any("this device proved" in p for p in problems)


def test_revoked_release(manifest: Manifest) -> None:
    tier, problems, _ = appraise(body_for(), with_status(manifest, "1.2.0", wire.RELEASE_REVOKED))
    assert tier is Tier.CONTRAINDICATED and any("revoked" in p for p in problems)


def test_deprecated_release_warns(manifest: Manifest) -> None:
    result = appraise_firmware(body_for(), AppraisalInputs(with_status(manifest, "1.2.0", wire.RELEASE_DEPRECATED),
                                                           Policy("smart-meter"), DeviceState()))
    assert result.trust_vector.tier() is Tier.WARNING and any("deprecated" in p for p in result.problems)
    assert result.state_updates == {}  # a problem: the svn high-water mark does not move


def test_version_not_allowed_by_policy(manifest: Manifest) -> None:
    tier, problems, _ = appraise(body_for(), manifest, Policy("smart-meter", allowed_versions=("1.1.0",)))
    assert tier is Tier.CONTRAINDICATED and any("not allowed by policy" in p for p in problems)


def test_secure_boot_off(manifest: Manifest) -> None:
    tier, problems, vector = appraise(body_for(secure_boot=False), manifest)
    assert tier is Tier.CONTRAINDICATED and vector.configuration == trust.CONFIG_CONTRAINDICATED
    assert "secure boot is off" in problems
    lenient = Policy("smart-meter", secure_boot=False)
    assert appraise(body_for(secure_boot=False), manifest, lenient)[0] is Tier.AFFIRMING


def test_debug_enabled(manifest: Manifest) -> None:
    tier, problems, _ = appraise(body_for(dbgstat=wire.DBG_ENABLED), manifest)
    assert tier is Tier.CONTRAINDICATED and "debug is enabled" in problems
    lenient = Policy("smart-meter", debug="any")
    assert appraise(body_for(dbgstat=wire.DBG_ENABLED), manifest, lenient)[0] is Tier.AFFIRMING


def test_hwmodel_mismatch(manifest: Manifest) -> None:
    tier, problems, vector = appraise(body_for(hwmodel="env-sensor"), manifest)
    assert tier is Tier.CONTRAINDICATED and vector.hardware == trust.HARDWARE_UNRECOGNIZED
    assert any("hwmodel" in p for p in problems)


def test_runtime_process_not_allowed(manifest: Manifest) -> None:
    policy = Policy("smart-meter", allowed_processes=("init", "meterd"))
    tier, _, vector = appraise(body_for(processes=("init", "meterd")), manifest, policy)
    assert tier is Tier.AFFIRMING and vector.runtime_opaque == trust.RUNTIME_APPROVED
    tier, problems, vector = appraise(body_for(processes=("init", "nc")), manifest, policy)
    assert tier is Tier.CONTRAINDICATED and vector.runtime_opaque == trust.RUNTIME_CONTRAINDICATED
    assert any("process 'nc'" in p for p in problems)


def test_runtime_endpoint_not_allowed(manifest: Manifest) -> None:
    policy = Policy("smart-meter", allowed_endpoints=("mqtt.fleet:8883",))
    tier, problems, _ = appraise(body_for(endpoints=("mqtt.fleet:8883", "203.0.113.9:4444")), manifest, policy)
    assert tier is Tier.CONTRAINDICATED and any("endpoint" in p for p in problems)


def test_no_manifest_is_not_affirming(tmp_path: Path) -> None:
    tier, problems, vector = appraise(body_for(), None)
    assert tier is Tier.WARNING and vector.executables == trust.EXEC_UNRECOGNIZED
    assert any("no signed manifest" in p for p in problems)
