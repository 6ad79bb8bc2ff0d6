"""TPM 2.0 quote evidence: measured boot, signed by an attestation key (AK) in the device's TPM.

Media type ``wire.TPM_MEDIA_TYPE``; the envelope, the checks and the choice of
counters are specified in docs/schemes/tpm.md. ``verify`` decodes the CBOR
envelope strictly, checks the AK's ECDSA P-256 signature over
SHA-256(TPMS_ATTEST), then the quote itself (magic, type, PCR selection) and
that the PCR values sent alongside hash to the signed ``pcrDigest``.
``appraise`` recomputes the boot PCR every release of the class manifest would
produce and applies the same release rules as the firmware scheme.

Pure: no TPM software stack is needed on the hub, only ``struct`` and ``cryptography``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from hub import wire
from hub.crypto.cbor_strict import CborError, loads_strict
from hub.reference import trust
from hub.reference.manifests import Component, Manifest, Release
from hub.reference.trust import TrustVector
from hub.schemes.base import Appraisal, AppraisalInputs, Claims, EvidenceError, TrustAnchor
from hub.schemes.claims import eat_nonce
from hub.schemes.firmware import release_rules
from hub.schemes.tpm_structs import ClockInfo, StructError, parse_attest, parse_ecdsa_signature

MAX_EVIDENCE_BYTES = 4096
MAX_ATTEST_BYTES = 1024
MAX_SIGNATURE_BYTES = 128
MAX_PCRS = 24
REQUIRED_PCRS: tuple[int, ...] = (wire.TPM_BOOT_PCR,)
_COUNTER_LIMIT = 2**63  # counters are stored as signed 64-bit integers
_ENVELOPE_KEYS = frozenset({wire.TPM_ENV_ATTEST, wire.TPM_ENV_SIGNATURE, wire.TPM_ENV_PCRS})


@dataclass(frozen=True, slots=True)
class TpmQuoteClaims:
    """What a verified quote says; every field except ``pcrs`` is signed, and ``pcrs`` hashes to a signed digest."""

    clock_info: ClockInfo
    firmware_version: int  # the TPM's own firmware, vendor-defined
    qualified_signer: bytes  # TPM2B_NAME of the AK (and its parents)
    pcrs: tuple[tuple[int, bytes], ...]  # (index, SHA-256 value), ascending index

    def pcr(self, index: int) -> bytes | None:
        return next((value for i, value in self.pcrs if i == index), None)


def boot_counter(clock_info: ClockInfo) -> int:
    """resetCount·2³² + restartCount: grows at every TPM Reset, Restart and Resume, never otherwise."""
    return clock_info.reset_count << 32 | clock_info.restart_count


def expected_boot_pcr(components: Sequence[Component]) -> bytes:
    """The boot PCR after extending each component digest in order, from its reset value of 32 zero bytes."""
    value = bytes(32)
    for component in components:
        value = hashlib.sha256(value + component.digest).digest()
    return value


def match_release(manifest: Manifest, pcr_value: bytes) -> Release | None:
    """The release (of any status) whose measured boot yields ``pcr_value``; constant time per release."""
    found = None
    for release in manifest.releases:
        if hmac.compare_digest(expected_boot_pcr(release.components), pcr_value) and found is None:
            found = release
    return found


class TpmScheme:
    name = "tpm"
    media_types = frozenset({wire.TPM_MEDIA_TYPE})
    topic_leaf = wire.EVIDENCE
    attests_platform = True

    def verify(self, raw: bytes, anchor: TrustAnchor) -> Claims:
        attest_bytes, signature_bytes, reported = _envelope(raw)
        key = anchor.public_key
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise EvidenceError("unsupported-key", "the enrolled key is not an EC P-256 attestation key")
        try:
            signature = parse_ecdsa_signature(signature_bytes)
        except StructError as exc:
            raise EvidenceError(exc.reason, exc.detail) from exc
        try:
            key.verify(encode_dss_signature(signature.r, signature.s), attest_bytes, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise EvidenceError("bad-signature", "quote signature does not verify with the enrolled AK") from exc
        try:  # from here on the device's AK signed what we read
            attest = parse_attest(attest_bytes)
        except StructError as exc:
            raise EvidenceError(exc.reason, exc.detail, authenticated=True) from exc
        if len(attest.selections) != 1 or attest.selections[0].hash_alg != wire.TPM_ALG_SHA256:
            raise EvidenceError("pcr-selection", "the quote must select one bank, SHA-256", authenticated=True)
        selected = attest.selections[0].pcrs
        if selected != REQUIRED_PCRS:
            raise EvidenceError("pcr-selection", f"quoted PCRs {list(selected)}, required {list(REQUIRED_PCRS)}",
                                authenticated=True)
        if tuple(index for index, _ in reported) != selected:
            raise EvidenceError("pcr-list-mismatch", f"reported PCRs {[i for i, _ in reported]} are not the quoted"
                                f" selection {list(selected)}")
        digest = hashlib.sha256(b"".join(value for _, value in reported)).digest()
        if not hmac.compare_digest(digest, attest.pcr_digest):
            raise EvidenceError("pcr-digest-mismatch", "the reported PCR values do not hash to the quoted pcrDigest")
        clock = attest.clock_info
        if clock.reset_count >= 2**31 or clock.clock >= _COUNTER_LIMIT:
            raise EvidenceError("counter-range", "resetCount or clock beyond what the hub stores",
                                authenticated=True)
        nonce = eat_nonce(attest.extra_data, "extraData (nonce)")
        boot = boot_counter(clock)
        body = TpmQuoteClaims(clock, attest.firmware_version, attest.qualified_signer, reported)
        return Claims(
            scheme=self.name,
            device_id=anchor.device_id,
            dedup_key=f"{clock.reset_count}.{clock.restart_count}.{clock.clock}",
            counter=(boot, clock.clock),
            nonce=nonce,
            body=body,
        )

    def appraise(self, claims: Claims, inputs: AppraisalInputs) -> Appraisal:
        body = claims.body
        assert isinstance(body, TpmQuoteClaims)
        return appraise_quote(body, inputs)


def _envelope(raw: bytes) -> tuple[bytes, bytes, tuple[tuple[int, bytes], ...]]:
    """Decode ``{1: attest, 2: signature, 3: [[index, value]...]}``; nothing here is authenticated yet."""
    try:
        envelope = loads_strict(raw, max_bytes=MAX_EVIDENCE_BYTES, max_depth=4)
    except CborError as exc:
        raise EvidenceError(exc.reason, exc.detail) from exc
    if not isinstance(envelope, Mapping) or set(envelope) != _ENVELOPE_KEYS:
        raise EvidenceError("bad-envelope", "expected a map with exactly the keys 1 (attest), 2 (signature), 3 (PCRs)")
    attest, signature, pcrs = (envelope[k] for k in (wire.TPM_ENV_ATTEST, wire.TPM_ENV_SIGNATURE, wire.TPM_ENV_PCRS))
    if not isinstance(attest, bytes) or not 0 < len(attest) <= MAX_ATTEST_BYTES:
        raise EvidenceError("bad-envelope", f"attest must be a bstr of 1..{MAX_ATTEST_BYTES} bytes")
    if not isinstance(signature, bytes) or not 0 < len(signature) <= MAX_SIGNATURE_BYTES:
        raise EvidenceError("bad-envelope", f"signature must be a bstr of 1..{MAX_SIGNATURE_BYTES} bytes")
    if not isinstance(pcrs, list) or not 0 < len(pcrs) <= MAX_PCRS:
        raise EvidenceError("bad-envelope", f"PCRs must be an array of 1..{MAX_PCRS} [index, value] pairs")
    reported: list[tuple[int, bytes]] = []
    for entry in pcrs:
        if (not isinstance(entry, list) or len(entry) != 2 or type(entry[0]) is not int
                or not isinstance(entry[1], bytes) or len(entry[1]) != 32):
            raise EvidenceError("bad-envelope", "a PCR entry must be [uint index, bstr .size 32]")
        if not 0 <= entry[0] < 64 or (reported and entry[0] <= reported[-1][0]):
            raise EvidenceError("bad-envelope", "PCR indices must be 0..63 and strictly ascending")
        reported.append((entry[0], entry[1]))
    return attest, signature, tuple(reported)


def appraise_quote(body: TpmQuoteClaims, inputs: AppraisalInputs) -> Appraisal:
    """Match the boot PCR against the class manifest and apply the release rules; never raises."""
    policy, manifest, state = inputs.policy, inputs.manifest, inputs.state
    problems: list[str] = []
    vector = TrustVector(instance_identity=trust.IDENTITY_TRUSTWORTHY, hardware=trust.HARDWARE_GENUINE,
                         executables=trust.EXEC_APPROVED)
    if policy.secure_boot or policy.debug == "disabled":
        vector = vector.worst(configuration=trust.CONFIG_UNSAFE)
        problems.append(f"policy {policy.ref} requires secure boot or debug state, which a TPM quote does not show")
    annotations = {"tpm_reset_count": body.clock_info.reset_count,
                   "tpm_restart_count": body.clock_info.restart_count, "tpm_clock": body.clock_info.clock}
    if manifest is None:
        vector = vector.worst(executables=trust.EXEC_UNRECOGNIZED)
        problems.append(f"no signed manifest for class {policy.device_class!r}")
        return Appraisal(vector, tuple(problems), annotations=annotations)
    pcr_value = body.pcr(wire.TPM_BOOT_PCR) or b""
    release = match_release(manifest, pcr_value)
    if release is None:
        vector = vector.worst(executables=trust.EXEC_CONTRAINDICATED)
        problems.append(f"PCR {wire.TPM_BOOT_PCR} value {pcr_value.hex()[:16]}… matches no release of manifest"
                        f" #{manifest.sequence}: an unapproved component was measured")
        return Appraisal(vector, tuple(problems), annotations=annotations)
    vector, release_problems = release_rules(release, manifest, inputs, vector)
    problems += release_problems
    updates: dict[str, object] = {}
    if not release_problems:
        updates["svn_high_water"] = max(state.svn_high_water, release.svn)
    return Appraisal(vector, tuple(problems), release.version, updates, annotations=annotations)
