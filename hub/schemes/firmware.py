"""Firmware evidence: an EAT (RFC 9711) profile of this project, COSE_Sign1-signed.

Profile ``wire.FIRMWARE_PROFILE``; the claims and their keys are specified in
docs/PROTOCOL.md. ``verify`` authenticates and types the claims;
``appraise`` compares the measured components with the signed manifest of
the device's class and applies the class policy.
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from hub import wire
from hub.crypto.cbor_strict import CborError, loads_strict
from hub.crypto.cose import CoseError, Sign1, decode_sign1, verify_sign1
from hub.crypto.keys import PublicKey
from hub.reference import trust
from hub.reference.identity import IdentityError, parse_x5chain, verify_chain
from hub.reference.manifests import Manifest, Release
from hub.reference.trust import TrustVector
from hub.schemes.base import Appraisal, AppraisalInputs, Claims, EvidenceError, TrustAnchor
from hub.schemes.claims import optional, require, require_nonce, text_list, typed, uint

MAX_EVIDENCE_BYTES = 16 * 1024
MAX_COMPONENTS = 32
COMPONENT_MEMO_MAX = 4096  # distinct measured-component encodings kept per scheme instance


@dataclass(frozen=True, slots=True)
class MeasuredComponent:
    name: str
    version: str | None
    digest: bytes


@dataclass(frozen=True, slots=True)
class FirmwareClaims:
    ueid: bytes
    hwmodel: str
    secure_boot: bool
    dbgstat: int
    bootcount: int
    seq: int
    swversion: str
    components: tuple[MeasuredComponent, ...]
    processes: tuple[str, ...] | None = None
    endpoints: tuple[str, ...] | None = None


def verify_cose_message(raw: bytes, anchor: TrustAnchor, max_bytes: int,
                        max_depth: int = 8) -> tuple[Sign1, Mapping[object, object]]:
    """Shared by COSE-signed schemes: decode, bind kid to the device, verify, decode the claims map."""
    try:
        message = decode_sign1(raw, max_bytes=max_bytes)
    except CoseError as exc:
        raise EvidenceError(exc.reason, exc.detail) from exc
    expected_kid = anchor.device_id.encode()
    if message.kid is None or not hmac.compare_digest(message.kid, expected_kid):
        raise EvidenceError("kid-mismatch", "protected kid does not name the topic's device")
    key = signing_key(message.protected.get(wire.HDR_X5CHAIN), anchor)
    try:
        verify_sign1(message, key)
    except CoseError as exc:
        raise EvidenceError(exc.reason, exc.detail) from exc
    try:
        payload = loads_strict(message.payload, max_bytes=max_bytes, max_depth=max_depth)
    except CborError as exc:
        raise EvidenceError(exc.reason, f"payload: {exc.detail}", authenticated=True) from exc
    if not isinstance(payload, Mapping):
        raise EvidenceError("bad-claims", "payload must be a claims map", authenticated=True)
    return message, payload


def verify_cose_evidence(raw: bytes, anchor: TrustAnchor, max_bytes: int) -> Mapping[object, object]:
    """``verify_cose_message`` when only the claims are needed."""
    return verify_cose_message(raw, anchor, max_bytes)[1]


def signing_key(x5chain: object, anchor: TrustAnchor) -> PublicKey:
    """The key evidence must verify with: the enrolled key, or a leaf certificate chaining to a CA.

    An ``x5chain`` never substitutes a key: with an enrolled key the leaf must carry that same key.
    """
    if x5chain is None:
        if anchor.public_key is None:
            raise EvidenceError("no-key", "no enrolled key and no x5chain for this device")
        return anchor.public_key
    try:
        chain = parse_x5chain(x5chain)
        when = None if anchor.now is None else dt.datetime.fromtimestamp(anchor.now, dt.UTC)
        key = verify_chain(chain, anchor.ca_certificates, anchor.device_id, when)
    except IdentityError as exc:
        raise EvidenceError(exc.reason, exc.detail) from exc
    if anchor.public_key is not None and not hmac.compare_digest(spki(key), spki(anchor.public_key)):
        raise EvidenceError("key-substitution", "x5chain leaf key is not the enrolled key")
    return key


def spki(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class FirmwareScheme:
    name = "firmware"
    media_types = frozenset({wire.FIRMWARE_MEDIA_TYPE})
    topic_leaf = wire.EVIDENCE
    attests_platform = True

    def __init__(self) -> None:
        self._components: dict[bytes, MeasuredComponent] = {}
        """encoded measured-component -> its decoded, checked value. A fleet reports few distinct
        components (one per firmware image), so each is decoded once, not once per evidence; the key is
        the exact bytes, so only an identical encoding is taken from here (bounded: COMPONENT_MEMO_MAX)."""

    def verify(self, raw: bytes, anchor: TrustAnchor) -> Claims:
        claims = verify_cose_evidence(raw, anchor, MAX_EVIDENCE_BYTES)
        if claims.get(wire.EAT_PROFILE) != wire.FIRMWARE_PROFILE:
            raise EvidenceError("wrong-profile", "eat_profile is not the firmware evidence profile", authenticated=True)
        body = _firmware_claims(claims, self._components)
        if anchor.ueid is not None and not hmac.compare_digest(body.ueid, anchor.ueid):
            raise EvidenceError("ueid-mismatch", "ueid differs from the one bound at enrolment", authenticated=True)
        nonce = require_nonce(claims, wire.NONCE)
        iat = optional(claims, wire.IAT, int, "iat")
        return Claims(
            scheme=self.name,
            device_id=anchor.device_id,
            dedup_key=f"{body.bootcount}:{body.seq}",
            counter=(body.bootcount, body.seq),
            nonce=nonce,
            body=body,
            issued_at=iat,
        )

    def appraise(self, claims: Claims, inputs: AppraisalInputs) -> Appraisal:
        body = claims.body
        assert isinstance(body, FirmwareClaims)
        return appraise_firmware(body, inputs)


def _firmware_claims(claims: Mapping[object, object],
                     memo: dict[bytes, MeasuredComponent] | None = None) -> FirmwareClaims:
    ueid = require(claims, wire.UEID, bytes, "ueid")
    if not 7 <= len(ueid) <= 33:
        raise EvidenceError("bad-claim", "ueid must be 7..33 bytes", authenticated=True)
    try:
        hwmodel = require(claims, wire.HWMODEL, bytes, "hwmodel").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EvidenceError("bad-claim", "hwmodel must be UTF-8", authenticated=True) from exc
    swversion = require(claims, wire.SWVERSION, list, "swversion")
    if not swversion or len(swversion) > 2:
        raise EvidenceError("bad-claim", "swversion must be [version, ? scheme]", authenticated=True)
    measurements = require(claims, wire.MEASUREMENTS, list, "measurements")
    if not 1 <= len(measurements) <= MAX_COMPONENTS:
        raise EvidenceError("bad-claim", f"measurements must hold 1..{MAX_COMPONENTS} entries", authenticated=True)
    processes = claims.get(wire.RUNTIME_PROCESSES)
    endpoints = claims.get(wire.RUNTIME_ENDPOINTS)
    return FirmwareClaims(
        ueid=ueid,
        hwmodel=hwmodel,
        secure_boot=require(claims, wire.OEMBOOT, bool, "oemboot"),
        dbgstat=uint(claims, wire.DBGSTAT, "dbgstat", maximum=4),
        bootcount=uint(claims, wire.BOOTCOUNT, "bootcount"),
        seq=uint(claims, wire.EVIDENCE_SEQ, "evidence sequence"),
        swversion=typed(swversion[0], str, "swversion"),
        components=tuple(_component(entry, memo) for entry in measurements),
        processes=None if processes is None else text_list(processes, "processes"),
        endpoints=None if endpoints is None else text_list(endpoints, "endpoints"),
    )


def _component(entry: object, memo: dict[bytes, MeasuredComponent] | None = None) -> MeasuredComponent:
    if not isinstance(entry, list) or len(entry) != 2 or entry[0] != wire.MC_CONTENT_FORMAT:
        raise EvidenceError("bad-claim", "a measurement must be [10000, bstr measured-component]", authenticated=True)
    encoded = typed(entry[1], bytes, "measured-component")
    if memo is not None:
        known = memo.get(encoded)
        if known is None:
            known = _decode_component(encoded)  # a bad encoding raises and is not kept
            if len(memo) >= COMPONENT_MEMO_MAX:
                memo.clear()
            memo[encoded] = known
        return known
    return _decode_component(encoded)


def _decode_component(encoded: bytes) -> MeasuredComponent:
    try:
        component = loads_strict(encoded, max_bytes=1024, max_depth=4)
    except CborError as exc:
        raise EvidenceError("bad-claim", f"measured-component: {exc}", authenticated=True) from exc
    if not isinstance(component, Mapping):
        raise EvidenceError("bad-claim", "measured-component must be a map", authenticated=True)
    ident = require(component, wire.MC_ID, list, "measured-component id")
    digest = require(component, wire.MC_MEASUREMENT, list, "measured-component measurement")
    if not 1 <= len(ident) <= 2 or len(digest) != 2 or digest[0] != wire.SHA256:
        raise EvidenceError("bad-claim", "measured-component must be {1: [name, ? version], 2: [-16, digest]}",
                            authenticated=True)
    value = typed(digest[1], bytes, "component digest")
    if len(value) != 32:
        raise EvidenceError("bad-claim", "SHA-256 digest must be 32 bytes", authenticated=True)
    version = typed(ident[1], str, "component version") if len(ident) == 2 else None
    return MeasuredComponent(typed(ident[0], str, "component name"), version, value)


def appraise_firmware(body: FirmwareClaims, inputs: AppraisalInputs) -> Appraisal:
    """Compare firmware claims with the manifest and policy; never raises for bad claims."""
    policy, manifest, state = inputs.policy, inputs.manifest, inputs.state
    problems: list[str] = []
    vector = TrustVector(
        instance_identity=trust.IDENTITY_TRUSTWORTHY,
        hardware=trust.HARDWARE_GENUINE,
        configuration=trust.CONFIG_APPROVED,
        executables=trust.EXEC_APPROVED,
    )
    if body.hwmodel != policy.device_class:
        vector = vector.worst(hardware=trust.HARDWARE_UNRECOGNIZED)
        problems.append(f"hwmodel {body.hwmodel!r} is not the enrolled class {policy.device_class!r}")
    if policy.secure_boot and not body.secure_boot:
        vector = vector.worst(configuration=trust.CONFIG_CONTRAINDICATED)
        problems.append("secure boot is off")
    if policy.debug == "disabled" and body.dbgstat == wire.DBG_ENABLED:
        vector = vector.worst(configuration=trust.CONFIG_CONTRAINDICATED)
        problems.append("debug is enabled")
    vector, runtime_problems = _runtime(body, inputs, vector)
    problems += runtime_problems
    updates: dict[str, object] = {}
    if manifest is None:
        vector = vector.worst(executables=trust.EXEC_UNRECOGNIZED)
        problems.append(f"no signed manifest for class {policy.device_class!r}")
        return Appraisal(vector, tuple(problems), body.swversion)
    release = manifest.release(body.swversion)
    unknown = [c for c in body.components if manifest.lookup(c.digest) is None]
    for comp in unknown:
        problems.append(f"component {comp.name!r} digest {comp.digest.hex()[:16]}… is in no manifest")
    if unknown:
        vector = vector.worst(executables=trust.EXEC_CONTRAINDICATED)
    if release is None:
        vector = vector.worst(executables=trust.EXEC_CONTRAINDICATED)
        problems.append(f"version {body.swversion} is not a release in manifest #{manifest.sequence}")
        return Appraisal(vector, tuple(problems), body.swversion)
    expected = {c.name: c.digest for c in release.components}
    reported = {c.name: c.digest for c in body.components}
    for name in sorted(expected.keys() - reported.keys()):
        problems.append(f"component {name!r} of release {release.version} was not measured")
        vector = vector.worst(executables=trust.EXEC_CONTRAINDICATED)
    for comp in body.components:
        want = expected.get(comp.name)
        if want is None:
            problems.append(f"component {comp.name!r} is not part of release {release.version}")
            vector = vector.worst(executables=trust.EXEC_CONTRAINDICATED)
        elif not hmac.compare_digest(want, comp.digest) and comp not in unknown:
            problems.append(f"component {comp.name!r} is from another release than {release.version}")
            vector = vector.worst(executables=trust.EXEC_CONTRAINDICATED)
    vector, release_problems = release_rules(release, manifest, inputs, vector)
    problems += release_problems
    if not problems:
        updates["svn_high_water"] = max(state.svn_high_water, release.svn)
    return Appraisal(vector, tuple(problems), release.version, updates)


def release_rules(release: Release, manifest: Manifest, inputs: AppraisalInputs,
                  vector: TrustVector) -> tuple[TrustVector, list[str]]:
    """Anti-rollback, revocation and allowed versions for a matched release (shared by every platform scheme)."""
    policy, state = inputs.policy, inputs.state
    problems: list[str] = []
    floor = max(manifest.min_svn, policy.min_svn)
    if release.svn < floor:
        vector = vector.worst(executables=trust.EXEC_CONTRAINDICATED)
        problems.append(f"rollback: release {release.version} has svn {release.svn}, below the minimum {floor}")
    elif release.svn < state.svn_high_water:
        vector = vector.worst(executables=trust.EXEC_CONTRAINDICATED)
        problems.append(f"rollback: svn {release.svn} is below the svn {state.svn_high_water} this device proved")
    if release.status == wire.RELEASE_REVOKED:
        vector = vector.worst(executables=trust.EXEC_CONTRAINDICATED)
        problems.append(f"release {release.version} is revoked")
    elif release.status == wire.RELEASE_DEPRECATED:
        vector = vector.worst(executables=trust.EXEC_VULNERABLE)
        problems.append(f"release {release.version} is deprecated")
    if policy.allowed_versions and release.version not in policy.allowed_versions:
        vector = vector.worst(executables=trust.EXEC_CONTRAINDICATED)
        problems.append(f"version {release.version} is not allowed by policy {policy.ref}")
    return vector, problems


def _runtime(body: FirmwareClaims, inputs: AppraisalInputs, vector: TrustVector) -> tuple[TrustVector, list[str]]:
    policy = inputs.policy
    problems: list[str] = []
    checks = (
        (body.processes, policy.allowed_processes, "process"),
        (body.endpoints, policy.allowed_endpoints, "endpoint"),
    )
    for reported, allowed, what in checks:
        if reported is None or allowed is None:
            continue
        for item in reported:
            if item not in allowed:
                problems.append(f"{what} {item!r} is not allowed by policy {policy.ref}")
    if problems:
        vector = vector.worst(runtime_opaque=trust.RUNTIME_CONTRAINDICATED)
    elif any(r is not None and a is not None for r, a, _ in checks):
        vector = vector.worst(runtime_opaque=trust.RUNTIME_APPROVED)
    return vector, problems
