"""The PSA token scheme (RFC 9783) on tokens from the simulator's own encoder: every check has a failing token."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from device_sim import cose as sim_cose
from device_sim import keys as sim_keys
from device_sim import psa as sim_psa
from hub import wire
from hub.crypto.cose import sign1
from hub.crypto.keys import fingerprint, load_public_pem
from hub.reference import trust
from hub.reference.manifests import (
    Component,
    Manifest,
    ManifestError,
    Release,
    parse_source,
    sign_manifest,
    verify_manifest,
)
from hub.reference.policy import Policy
from hub.schemes import SchemeRegistry, default_schemes
from hub.schemes.base import Appraisal, AppraisalInputs, Claims, DeviceState, EvidenceError, TrustAnchor
from hub.schemes.psa import PsaClaims, PsaScheme

MANIFEST_SOURCE = Path(__file__).resolve().parents[1] / "firmware_manifests" / "psa-sensor" / "manifest.toml"
DEVICE = "psa-sensor-0001"
NONCE = b"E" + bytes(31)
KEY = sim_keys.device_private_key("unit", DEVICE)
SCHEME = PsaScheme()


def _token(version: str = "1.2.0", **changes: Any) -> sim_psa.PsaToken:
    token = sim_psa.PsaToken(
        nonce=NONCE, instance_id=sim_psa.instance_id("unit", DEVICE), implementation_id=sim_psa.implementation_id(),
        client_id=-1, lifecycle=wire.PSA_LIFECYCLE_SECURED, boot_seed=bytes(32),
        components=sim_psa.software_components(version),
    )
    return dataclasses.replace(token, **changes)


def _anchor(ueid: bytes | None = None, key: Any = None) -> TrustAnchor:
    public = load_public_pem(sim_keys.public_key_pem(KEY).decode()) if key is None else key
    ueid = sim_psa.instance_id("unit", DEVICE) if ueid is None else ueid
    return TrustAnchor(DEVICE, "psa-sensor", public, ueid)


def _signed(claims: dict[int, object], kid: bytes | None = None) -> bytes:
    return sim_cose.sign1(cbor2.dumps(claims), KEY, kid if kid is not None else sim_psa.instance_id("unit", DEVICE))


def _verify(raw: bytes, anchor: TrustAnchor | None = None) -> Claims:
    return SCHEME.verify(raw, anchor or _anchor())


def _reason(raw: bytes, anchor: TrustAnchor | None = None) -> str:
    with pytest.raises(EvidenceError) as caught:
        _verify(raw, anchor)
    return caught.value.reason


def _appraise(token: sim_psa.PsaToken, manifest: Manifest | None = None, state: DeviceState | None = None,
              policy: Policy | None = None) -> Appraisal:
    claims = _verify(sim_psa.sign_token(token, KEY))
    manifest = manifest or parse_source(MANIFEST_SOURCE.read_text())
    return SCHEME.appraise(claims, AppraisalInputs(manifest, policy or Policy("psa-sensor", min_svn=2),
                                                   state or DeviceState()))


# --- verify ------------------------------------------------------------------------


def test_registered_under_the_psa_media_type() -> None:
    registry = SchemeRegistry(default_schemes())
    assert registry.find(wire.PSA_MEDIA_TYPE, wire.EVIDENCE) is not None
    assert registry.by_name("psa") is registry.find(wire.PSA_MEDIA_TYPE, wire.EVIDENCE)


def test_honest_token_verifies_with_nonce_and_no_counter() -> None:
    claims = _verify(sim_psa.sign_token(_token(), KEY))
    assert isinstance(claims.body, PsaClaims)
    assert claims.nonce == NONCE and claims.counter is None and claims.scheme == "psa"
    assert claims.body.secured and claims.body.client_id == -1
    assert [c.measurement_type for c in claims.body.components] == ["BL2", "PRoT", "ARoT", "NSPE"]


def test_dedup_key_comes_from_the_signed_payload_not_the_message_bytes() -> None:
    raw = sim_psa.sign_token(_token(), KEY)
    again = sim_psa.sign_token(_token(), KEY)  # same claims, a fresh ECDSA signature
    assert raw != again
    item = cbor2.loads(raw)
    protected, _, payload, signature = item.value
    n = sim_keys.P256_ORDER
    s = int.from_bytes(signature[32:], "big")
    malleated = cbor2.dumps(cbor2.CBORTag(18, [protected, {99: "added"}, payload,
                                               signature[:32] + (n - s).to_bytes(32, "big")]))
    keys = {_verify(r).dedup_key for r in (raw, again, malleated)}
    assert len(keys) == 1
    assert _verify(sim_psa.sign_token(_token(nonce=b"E" + bytes(30) + b"\x01"), KEY)).dedup_key not in keys


def test_key_comes_from_the_registry_so_a_forged_token_fails() -> None:
    forged = sim_psa.sign_token(_token(), sim_keys.forged_private_key("unit", DEVICE))
    assert _reason(forged) == "bad-signature"


def test_instance_id_must_be_the_ueid_bound_at_enrolment() -> None:
    other = b"\x01" + bytes(32)
    assert _reason(sim_psa.sign_token(_token(), KEY), _anchor(ueid=other)) == "instance-id-mismatch"
    no_ueid = dataclasses.replace(_anchor(), ueid=None)
    assert _reason(sim_psa.sign_token(_token(), KEY), no_ueid) == "instance-id-unbound"


def test_kid_may_be_absent_the_instance_id_or_its_key_hash_but_nothing_else() -> None:
    claims = sim_psa.claims_map(_token())
    assert _reason(_signed(claims, kid=DEVICE.encode())) == "kid-mismatch"
    instance = sim_psa.instance_id("unit", DEVICE)
    assert _verify(_signed(claims, kid=instance)).body is not None
    # TF-M signs with kid = the 32-byte key hash that follows the instance id's 0x01 type byte (RFC 9783 instance id)
    assert _verify(_signed(claims, kid=instance[1:])).body is not None
    assert _reason(_signed(claims, kid=instance[:-1])) == "kid-mismatch"
    assert _reason(_signed(claims, kid=b"\x01" + instance)) == "kid-mismatch"
    no_kid = sign1(cbor2.dumps(claims), KEY)  # {1: -7} only, as TF-M's example token
    assert _verify(no_kid).body is not None


def test_no_enrolled_key_is_rejected() -> None:
    anchor = dataclasses.replace(_anchor(), public_key=None)
    assert _reason(sim_psa.sign_token(_token(), KEY), anchor) == "no-key"


def test_only_the_profile_algorithms_are_accepted() -> None:
    ed_key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32))
    raw = sign1(cbor2.dumps(sim_psa.claims_map(_token())), ed_key)
    assert _reason(raw, _anchor(key=ed_key.public_key())) == "alg-not-in-profile"


@pytest.mark.parametrize(("change", "reason"), [
    ({wire.EAT_PROFILE: wire.FIRMWARE_PROFILE}, "wrong-profile"),
    ({wire.NONCE: bytes(33)}, "bad-claim"),
    ({wire.PSA_CLIENT_ID: 2**31}, "bad-claim"),
    ({wire.PSA_CLIENT_ID: True}, "bad-claim"),
    ({wire.PSA_SECURITY_LIFECYCLE: 0x30FF + 1}, "bad-claim"),
    ({wire.PSA_SECURITY_LIFECYCLE: -1}, "bad-claim"),
    ({wire.PSA_BOOT_SEED: bytes(33)}, "bad-claim"),
    ({wire.PSA_CERTIFICATION_REFERENCE: "123456789012a-12345"}, "bad-claim"),
    ({wire.PSA_VERIFICATION_SERVICE: ""}, "bad-claim"),
    ({wire.PSA_VERIFICATION_SERVICE: 7}, "bad-claim"),
    ({wire.PSA_SOFTWARE_COMPONENTS: [{2: bytes(32), 5: bytes(32)}] * 33}, "bad-claim"),
    ({wire.PSA_SOFTWARE_COMPONENTS: [[bytes(32), bytes(32)]]}, "bad-claim"),
    ({wire.PSA_SOFTWARE_COMPONENTS: [{2: bytes(32), 5: bytes(32), 3: "x"}]}, "bad-claim"),
    ({wire.PSA_SOFTWARE_COMPONENTS: [{2: bytes(32), 5: bytes(31)}]}, "bad-claim"),
    ({wire.PSA_SOFTWARE_COMPONENTS: [{1: "", 2: bytes(32), 5: bytes(32)}]}, "bad-claim"),
    ({wire.PSA_SOFTWARE_COMPONENTS: [{2: bytes(32), 4: 1, 5: bytes(32)}]}, "bad-claim"),
    ({wire.PSA_IMPLEMENTATION_ID: bytes(33)}, "bad-claim"),
])
def test_claim_typing(change: dict[int, object], reason: str) -> None:
    claims = sim_psa.claims_map(_token())
    claims.update(change)
    assert _reason(_signed(claims)) == reason


@pytest.mark.parametrize("key", [wire.NONCE, wire.UEID, wire.PSA_CLIENT_ID, wire.PSA_IMPLEMENTATION_ID,
                                 wire.PSA_SECURITY_LIFECYCLE, wire.PSA_SOFTWARE_COMPONENTS])
def test_mandatory_claims(key: int) -> None:
    claims = sim_psa.claims_map(_token())
    del claims[key]
    assert _reason(_signed(claims)) == "missing-claim"


def test_errors_after_the_signature_are_marked_authenticated() -> None:
    claims = sim_psa.claims_map(_token())
    del claims[wire.PSA_SECURITY_LIFECYCLE]
    with pytest.raises(EvidenceError) as caught:
        _verify(_signed(claims))
    assert caught.value.authenticated
    with pytest.raises(EvidenceError) as forged:
        _verify(sim_psa.sign_token(_token(), sim_keys.forged_private_key("unit", DEVICE)))
    assert not forged.value.authenticated


def test_unknown_claims_are_ignored() -> None:
    claims = sim_psa.claims_map(_token())
    claims[-70000] = "vendor"
    assert _verify(_signed(claims)).body is not None


# --- appraise -----------------------------------------------------------------------


def test_honest_token_is_affirmed_with_its_release_and_annotations() -> None:
    appraisal = _appraise(_token())
    assert appraisal.trust_vector.tier() == trust.Tier.AFFIRMING, appraisal.problems
    assert appraisal.firmware_version == "1.2.0"
    assert appraisal.state_updates == {"svn_high_water": 3}
    assert appraisal.annotations["psa.verification_service"] == sim_psa.VERIFICATION_SERVICE
    assert appraisal.annotations["psa.certification_reference"] == sim_psa.CERTIFICATION_REFERENCE


@pytest.mark.parametrize("lifecycle", [0x0000, 0x1000, 0x2000, 0x4000, 0x5000, 0x6000, 0x60FF])
def test_a_lifecycle_other_than_secured_contraindicates_the_configuration(lifecycle: int) -> None:
    appraisal = _appraise(_token(lifecycle=lifecycle))
    assert appraisal.trust_vector.configuration == trust.CONFIG_CONTRAINDICATED
    assert "not secured" in appraisal.problems[-1] and appraisal.state_updates == {}


def test_secured_sub_states_are_secured() -> None:
    assert _appraise(_token(lifecycle=0x30FF)).trust_vector.tier() == trust.Tier.AFFIRMING


def test_unknown_measurement_contraindicates_executables() -> None:
    token = _token(components=sim_psa.software_components("1.2.0", tampered=True))
    appraisal = _appraise(token)
    assert appraisal.trust_vector.executables == trust.EXEC_CONTRAINDICATED
    assert any("'NSPE'" in p and "in no manifest" in p for p in appraisal.problems)


def test_component_version_must_match_the_release_of_its_measurement() -> None:
    comps = list(sim_psa.software_components("1.2.0"))
    comps[1] = dataclasses.replace(comps[1], version="9.9.9")
    appraisal = _appraise(_token(components=tuple(comps)))
    assert appraisal.trust_vector.executables == trust.EXEC_CONTRAINDICATED
    assert any("reports version 9.9.9" in p for p in appraisal.problems)


def test_signer_id_must_match_the_manifest() -> None:
    comps = list(sim_psa.software_components("1.2.0"))
    comps[0] = dataclasses.replace(comps[0], signer_id=sim_psa.signer_id("NSPE"))
    appraisal = _appraise(_token(components=tuple(comps)))
    assert appraisal.trust_vector.executables == trust.EXEC_CONTRAINDICATED
    assert any("signer id" in p for p in appraisal.problems)
    assert appraisal.state_updates == {}


def test_signer_id_is_not_checked_when_the_manifest_gives_none() -> None:
    manifest = parse_source(MANIFEST_SOURCE.read_text())
    bare = Manifest(manifest.device_class, manifest.sequence, manifest.min_svn, tuple(
        dataclasses.replace(r, components=tuple(dataclasses.replace(c, signer_id=None) for c in r.components))
        for r in manifest.releases))
    comps = list(sim_psa.software_components("1.2.0"))
    comps[0] = dataclasses.replace(comps[0], signer_id=bytes(32))
    assert _appraise(_token(components=tuple(comps)), manifest=bare).trust_vector.tier() == trust.Tier.AFFIRMING


def test_rollback_below_the_minimum_svn() -> None:
    appraisal = _appraise(_token(version="1.0.0"))
    assert appraisal.trust_vector.executables == trust.EXEC_CONTRAINDICATED
    assert any(p.startswith("rollback") for p in appraisal.problems)


def test_rollback_below_the_svn_this_device_proved() -> None:
    appraisal = _appraise(_token(version="1.1.0"), state=DeviceState(svn_high_water=3))
    assert any("this device proved" in p for p in appraisal.problems)


def test_revoked_release() -> None:
    manifest = parse_source(MANIFEST_SOURCE.read_text())
    revoked = Manifest(manifest.device_class, 2, manifest.min_svn, tuple(
        dataclasses.replace(r, status=wire.RELEASE_REVOKED) if r.version == "1.2.0" else r
        for r in manifest.releases))
    appraisal = _appraise(_token(), manifest=revoked)
    assert any("revoked" in p for p in appraisal.problems)
    assert appraisal.trust_vector.tier() == trust.Tier.CONTRAINDICATED


def test_components_from_different_releases() -> None:
    mixed = sim_psa.software_components("1.1.0")[:1] + sim_psa.software_components("1.2.0")[1:]
    appraisal = _appraise(_token(components=mixed))
    assert any("another release" in p for p in appraisal.problems)


def test_no_manifest_leaves_executables_unrecognized() -> None:
    claims = _verify(sim_psa.sign_token(_token(), KEY))
    appraisal = SCHEME.appraise(claims, AppraisalInputs(None, Policy("psa-sensor"), DeviceState()))
    assert appraisal.trust_vector.executables == trust.EXEC_UNRECOGNIZED


def test_manifest_components_carry_signer_ids() -> None:
    manifest = parse_source(MANIFEST_SOURCE.read_text())
    release = manifest.release("1.2.0")
    assert release is not None
    assert {c.name: c.signer_id for c in release.components} == {
        name: sim_psa.signer_id(name) for name in ("BL2", "PRoT", "ARoT", "NSPE")}
    assert isinstance(release, Release) and all(isinstance(c, Component) for c in release.components)


def test_signer_ids_survive_signing_and_old_manifests_stay_valid() -> None:
    operator = sim_keys.device_private_key("unit", "operator")
    trusted = {fingerprint(operator.public_key()): operator.public_key()}
    manifest = parse_source(MANIFEST_SOURCE.read_text())
    assert verify_manifest(sign_manifest(manifest, operator, issued_at=1), trusted).releases == manifest.releases
    env = parse_source((MANIFEST_SOURCE.parents[1] / "env-sensor" / "manifest.toml").read_text())
    assert all(c.signer_id is None for r in env.releases for c in r.components)
    assert verify_manifest(sign_manifest(env, operator, issued_at=1), trusted).releases == env.releases


@pytest.mark.parametrize("bad", ["zz", "00" * 31])
def test_manifest_signer_id_must_be_a_psa_hash(bad: str) -> None:
    text = MANIFEST_SOURCE.read_text().replace(f'signer_id = "{sim_psa.signer_id("BL2").hex()}"',
                                               f'signer_id = "{bad}"', 1)
    with pytest.raises(ManifestError):
        parse_source(text)
