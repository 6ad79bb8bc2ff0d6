"""PSA attestation tokens (RFC 9783), profile ``tag:psacertified.org,2023:psa#tfm``.

The older profiles deployed TF-M platforms send, ``http://arm.com/psa/2.0.0`` and
``PSA_IOT_PROFILE_1``, are accepted as RFC 9783 (appendix A) recommends: their claims are mapped to
the psa#tfm keys (``_as_tfm``) and then read by the same rules.

A token is a COSE_Sign1 (ES256, ES384 or ES512, ``alg`` protected) over a
claims map; the claim keys are in ``hub.wire`` (``PSA_*``, ``SWC_*``).
``verify`` checks the signature with the key the registry holds for the
topic's device id, types every claim as the RFC's CDDL says, and requires
the instance id to be the UEID bound at enrolment. PSA identifies the key by
the instance id; the protected ``kid`` is only a hint (RFC 9052 §3.1), and the
key always comes from enrolment. It may be absent, the instance id, or the
instance id's 32-byte key hash without its 0x01 type byte (a UEID of type RAND),
which is what TF-M puts in ``kid`` (its key id and instance id share that
hash); a kid naming anything else is refused as a mis-provisioned device. The
token carries no counter, so freshness rests on the nonce alone and the
dedup key is the SHA-256 of the signed payload.

``appraise`` reuses the firmware scheme's release logic (manifest digests,
release membership, rollback, revocation, allowed versions) through
``appraise_firmware`` and adds what PSA states: the security lifecycle must
be *secured*, and each component's version and signer id must match the
manifest entry of its measurement.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from hub import wire
from hub.crypto.cbor_strict import CborError, loads_strict
from hub.crypto.cose import CoseError, Sign1, decode_sign1, verify_sign1
from hub.crypto.mac0 import Mac0, decode_mac0, is_mac0, verify_mac0
from hub.reference import trust
from hub.reference.manifests import Manifest
from hub.schemes.base import Appraisal, AppraisalInputs, Claims, EvidenceError, TrustAnchor
from hub.schemes.claims import optional, require, require_nonce
from hub.schemes.firmware import FirmwareClaims, MeasuredComponent, appraise_firmware
from hub.schemes.psa_profiles import LEGACY_CERTIFICATION_REFERENCE, as_tfm, profile_of

MAX_TOKEN_BYTES = 8 * 1024
MAX_COMPONENTS = 32
MAX_TEXT = 256
PSA_ALGORITHMS = frozenset({wire.ALG_ES256, wire.ALG_ES384, wire.ALG_ES512})
_CERTIFICATION_REFERENCE = re.compile(r"[0-9]{13}-[0-9]{5}")
PROFILES = (wire.PSA_PROFILE, wire.PSA_PROFILE_2, wire.PSA_PROFILE_1)
_LIFECYCLE_STATES = {
    wire.PSA_LIFECYCLE_UNKNOWN: "unknown",
    wire.PSA_LIFECYCLE_ASSEMBLY_AND_TEST: "assembly-and-test",
    wire.PSA_LIFECYCLE_PROVISIONING: "psa-rot-provisioning",
    wire.PSA_LIFECYCLE_SECURED: "secured",
    wire.PSA_LIFECYCLE_NON_PSA_ROT_DEBUG: "non-psa-rot-debug",
    wire.PSA_LIFECYCLE_RECOVERABLE_PSA_ROT_DEBUG: "recoverable-psa-rot-debug",
    wire.PSA_LIFECYCLE_DECOMMISSIONED: "decommissioned",
}
_APPLICATION_TYPES = ("NSPE", "App")  # the non-secure application names the platform release


@dataclass(frozen=True, slots=True)
class SoftwareComponent:
    measurement_value: bytes
    signer_id: bytes
    measurement_type: str | None = None
    version: str | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class PsaClaims:
    nonce: bytes
    instance_id: bytes
    implementation_id: bytes
    client_id: int
    lifecycle: int
    components: tuple[SoftwareComponent, ...]
    boot_seed: bytes | None = None
    certification_reference: str | None = None
    verification_service: str | None = None
    profile: str = wire.PSA_PROFILE

    @property
    def secured(self) -> bool:
        return self.lifecycle & 0xFF00 == wire.PSA_LIFECYCLE_SECURED


def lifecycle_name(value: int) -> str:
    return _LIFECYCLE_STATES.get(value & 0xFF00, "invalid")


class PsaScheme:
    name = "psa"
    media_types = frozenset({wire.PSA_MEDIA_TYPE})
    topic_leaf = wire.EVIDENCE
    attests_platform = True

    def verify(self, raw: bytes, anchor: TrustAnchor) -> Claims:
        message = _authenticate_mac0(raw, anchor) if is_mac0(raw) else _authenticate_sign1(raw, anchor)
        try:
            payload = loads_strict(message.payload, max_bytes=MAX_TOKEN_BYTES, max_depth=4)
        except CborError as exc:
            raise EvidenceError(exc.reason, f"payload: {exc.detail}", authenticated=True) from exc
        if not isinstance(payload, Mapping):
            raise EvidenceError("bad-claims", "payload must be a claims map", authenticated=True)
        profile = profile_of(payload)
        if profile is None:
            raise EvidenceError("wrong-profile", f"eat_profile must be {wire.PSA_PROFILE!r} (or an older PSA profile: "
                                f"{wire.PSA_PROFILE_2!r}, {wire.PSA_PROFILE_1!r})", authenticated=True)
        body = psa_claims(as_tfm(payload, profile), profile)
        if anchor.ueid is None:
            raise EvidenceError("instance-id-unbound", "no instance id (UEID) was bound at enrolment",
                                authenticated=True)
        if not hmac.compare_digest(body.instance_id, anchor.ueid):
            raise EvidenceError("instance-id-mismatch", "instance id differs from the UEID bound at enrolment",
                                authenticated=True)
        if message.kid is not None and not _kid_names_instance(message.kid, body.instance_id):
            raise EvidenceError("kid-mismatch", "protected kid is neither the instance id nor its 32-byte key hash",
                                authenticated=True)
        return Claims(
            scheme=self.name,
            device_id=anchor.device_id,
            dedup_key="sha256:" + hashlib.sha256(message.payload).hexdigest(),
            counter=None,
            nonce=body.nonce,
            body=body,
        )

    def appraise(self, claims: Claims, inputs: AppraisalInputs) -> Appraisal:
        body = claims.body
        assert isinstance(body, PsaClaims)
        return appraise_psa(body, inputs)


def _kid_names_instance(kid: bytes, instance_id: bytes) -> bool:
    """True if ``kid`` is the instance id (0x01 || key hash) or the key hash alone (TF-M's key id)."""
    return hmac.compare_digest(kid, instance_id) or hmac.compare_digest(kid, instance_id[1:])


def _authenticate_sign1(raw: bytes, anchor: TrustAnchor) -> Sign1:
    try:
        message = decode_sign1(raw, max_bytes=MAX_TOKEN_BYTES)
    except CoseError as exc:
        raise EvidenceError(exc.reason, exc.detail) from exc
    if message.alg not in PSA_ALGORITHMS:
        raise EvidenceError("alg-not-in-profile", f"algorithm {message.alg} is not ES256, ES384 or ES512")
    if anchor.public_key is None:
        if anchor.mac_key is not None:
            raise EvidenceError("sign1-for-mac-key", "a COSE_Sign1 token, but this device is enrolled with a "
                                "symmetric key: it must send COSE_Mac0 (HMAC 256/256)")
        raise EvidenceError("no-key", "no enrolled key for this device")
    try:
        verify_sign1(message, anchor.public_key)
    except CoseError as exc:
        raise EvidenceError(exc.reason, exc.detail) from exc
    return message


def _authenticate_mac0(raw: bytes, anchor: TrustAnchor) -> Mac0:
    """A COSE_Mac0 token (TF-M's symmetric initial attestation key): only for a device enrolled with one."""
    if anchor.mac_key is None:
        raise EvidenceError("mac0-for-asymmetric-key", "a COSE_Mac0 token, but this device is enrolled with an "
                            "asymmetric key (a public key), not a symmetric one: it must send COSE_Sign1")
    try:
        message = decode_mac0(raw, max_bytes=MAX_TOKEN_BYTES)
        verify_mac0(message, anchor.mac_key)
    except CoseError as exc:
        raise EvidenceError(exc.reason, exc.detail) from exc
    return message


# --- claims ------------------------------------------------------------------------


def psa_claims(claims: Mapping[object, object], profile: str = wire.PSA_PROFILE) -> PsaClaims:
    """Type every RFC 9783 claim (psa#tfm keys); raise EvidenceError naming the first one that does not fit."""
    instance_id = require(claims, wire.UEID, bytes, "instance id")
    if len(instance_id) != wire.PSA_INSTANCE_ID_SIZE or instance_id[0] != 0x01:
        raise _bad("instance id must be 33 bytes starting with 0x01 (RAND)")
    implementation_id = require(claims, wire.PSA_IMPLEMENTATION_ID, bytes, "implementation id")
    if len(implementation_id) != wire.PSA_IMPLEMENTATION_ID_SIZE:
        raise _bad("implementation id must be 32 bytes")
    client_id = require(claims, wire.PSA_CLIENT_ID, int, "client id")
    if not -(2**31) <= client_id < 2**31 or client_id == 0:
        raise _bad("client id must be a 32-bit signed integer other than 0 (RFC 9783: -2**31..-1 non-secure, "
                   "1..2**31-1 secure)")
    lifecycle = require(claims, wire.PSA_SECURITY_LIFECYCLE, int, "security lifecycle")
    if not 0 <= lifecycle <= 0xFFFF or lifecycle_name(lifecycle) == "invalid":
        raise _bad(f"security lifecycle {lifecycle:#x} is not a PSA lifecycle state")
    boot_seed = optional(claims, wire.PSA_BOOT_SEED, bytes, "boot seed")
    if boot_seed is not None and not 8 <= len(boot_seed) <= 32:
        raise _bad("boot seed must be 8..32 bytes")
    reference = optional(claims, wire.PSA_CERTIFICATION_REFERENCE, str, "certification reference")
    pattern = _CERTIFICATION_REFERENCE if profile == wire.PSA_PROFILE else LEGACY_CERTIFICATION_REFERENCE
    if reference is not None and not pattern.fullmatch(reference):
        raise _bad("certification reference must be EAN-13+5 (13 digits, '-', 5 digits)")
    service = optional(claims, wire.PSA_VERIFICATION_SERVICE, str, "verification service indicator")
    if service is not None and not 0 < len(service) <= MAX_TEXT:
        raise _bad(f"verification service indicator must be 1..{MAX_TEXT} characters")
    entries = require(claims, wire.PSA_SOFTWARE_COMPONENTS, list, "software components")
    if not 1 <= len(entries) <= MAX_COMPONENTS:
        raise _bad(f"software components must hold 1..{MAX_COMPONENTS} entries")
    return PsaClaims(
        nonce=_hash(require_nonce(claims, wire.NONCE), "nonce"),
        instance_id=instance_id,
        implementation_id=implementation_id,
        client_id=client_id,
        lifecycle=lifecycle,
        components=tuple(_component(entry) for entry in entries),
        boot_seed=boot_seed,
        certification_reference=reference,
        verification_service=service,
        profile=profile,
    )


def _component(entry: object) -> SoftwareComponent:
    if not isinstance(entry, Mapping):
        raise _bad("a software component must be a map")
    unknown = set(entry) - {wire.SWC_MEASUREMENT_TYPE, wire.SWC_MEASUREMENT_VALUE, wire.SWC_VERSION,
                            wire.SWC_SIGNER_ID, wire.SWC_MEASUREMENT_DESCRIPTION}
    if unknown:
        raise _bad(f"software component has unknown keys {sorted(map(str, unknown))}")
    return SoftwareComponent(
        measurement_value=_hash(require(entry, wire.SWC_MEASUREMENT_VALUE, bytes, "measurement value"),
                                "measurement value"),
        signer_id=_hash(require(entry, wire.SWC_SIGNER_ID, bytes, "signer id"), "signer id"),
        measurement_type=_text(entry, wire.SWC_MEASUREMENT_TYPE, "measurement type"),
        version=_text(entry, wire.SWC_VERSION, "version"),
        description=_text(entry, wire.SWC_MEASUREMENT_DESCRIPTION, "measurement description"),
    )


def _hash(value: bytes, name: str) -> bytes:
    if len(value) not in wire.PSA_HASH_SIZES:
        raise _bad(f"{name} must be 32, 48 or 64 bytes, got {len(value)}")
    return value


def _text(entry: Mapping[object, object], key: int, name: str) -> str | None:
    value = optional(entry, key, str, name)
    if value is not None and not 0 < len(value) <= MAX_TEXT:
        raise _bad(f"{name} must be 1..{MAX_TEXT} characters")
    return value


def _bad(detail: str) -> EvidenceError:
    return EvidenceError("bad-claim", detail, authenticated=True)


# --- appraisal -----------------------------------------------------------------------


def appraise_psa(body: PsaClaims, inputs: AppraisalInputs) -> Appraisal:
    """Firmware-release appraisal of the components, then the PSA lifecycle, version and signer checks."""
    manifest = inputs.manifest
    components = tuple(
        MeasuredComponent(c.measurement_type or f"component-{i}", c.version, c.measurement_value)
        for i, c in enumerate(body.components)
    )
    as_firmware = FirmwareClaims(
        ueid=body.instance_id,
        hwmodel=inputs.policy.device_class,  # PSA names hardware by implementation id, bound through the key
        secure_boot=True,  # lifecycle is judged below; a secured PSA RoT boots only signed images
        dbgstat=wire.DBG_DISABLED,
        bootcount=0,
        seq=0,
        swversion=_platform_version(body, manifest),
        components=components,
    )
    base = appraise_firmware(as_firmware, inputs)
    vector, problems = base.trust_vector, list(base.problems)
    if not body.secured:
        vector = vector.worst(configuration=trust.CONFIG_CONTRAINDICATED)
        problems.append(f"security lifecycle {body.lifecycle:#06x} ({lifecycle_name(body.lifecycle)}) is not secured")
    component_problems = _component_checks(body, manifest)
    if component_problems:
        vector = vector.worst(executables=trust.EXEC_CONTRAINDICATED)
        problems += component_problems
    updates = base.state_updates if len(problems) == len(base.problems) else {}
    return dataclasses.replace(base, trust_vector=vector, problems=tuple(problems), state_updates=updates,
                               annotations=_annotations(body))


def _platform_version(body: PsaClaims, manifest: Manifest | None) -> str:
    """The release the token claims: its application (NSPE) component's version, else the last component's."""
    app = next((c for c in body.components if c.measurement_type in _APPLICATION_TYPES), body.components[-1])
    if app.version is not None:
        return app.version
    found = manifest.lookup(app.measurement_value) if manifest is not None else None
    return found[0].version if found is not None else "unknown"


def _component_checks(body: PsaClaims, manifest: Manifest | None) -> list[str]:
    problems: list[str] = []
    if manifest is None:
        return problems
    for comp in body.components:
        found = manifest.lookup(comp.measurement_value)
        if found is None:
            continue  # appraise_firmware reported it as in no manifest
        release, reference = found
        label = comp.measurement_type or comp.measurement_value.hex()[:16]
        if comp.version is not None and comp.version != release.version:
            problems.append(f"component {label!r} reports version {comp.version} but its measurement is "
                            f"release {release.version}'s")
        if reference.signer_id is not None and not hmac.compare_digest(reference.signer_id, comp.signer_id):
            problems.append(f"component {label!r} signer id {comp.signer_id.hex()[:16]}… is not the manifest's")
    return problems


def _annotations(body: PsaClaims) -> dict[str, object]:
    notes: dict[str, object] = {
        "psa.profile": body.profile,
        "psa.lifecycle": f"{body.lifecycle:#06x} {lifecycle_name(body.lifecycle)}",
        "psa.implementation_id": body.implementation_id.hex(),
        "psa.client_id": body.client_id,
    }
    if body.verification_service is not None:
        notes["psa.verification_service"] = body.verification_service
    if body.certification_reference is not None:
        notes["psa.certification_reference"] = body.certification_reference
    return notes
