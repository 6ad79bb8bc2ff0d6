"""The TPM quote scheme on real quotes from swtpm: every check the hub makes has a quote that fails it.

Structural negatives take a real TPMS_ATTEST, change one field and re-sign it with a
software P-256 key that the test enrols as the AK, so only the changed field can fail.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from hub import wire
from hub.crypto.freshness import check_nonce, epoch_nonce
from hub.crypto.keys import load_public_pem
from hub.reference import trust
from hub.reference.manifests import Manifest, parse_source
from hub.reference.policy import Policy
from hub.schemes import SchemeRegistry, default_schemes
from hub.schemes.base import AppraisalInputs, Claims, DeviceState, EvidenceError, TrustAnchor
from hub.schemes.tpm import TpmQuoteClaims, TpmScheme, expected_boot_pcr
from hub.schemes.tpm_structs import ClockInfo, PcrSelection, QuoteAttest, parse_attest

if shutil.which("swtpm") is None:
    pytest.fail("swtpm is not installed: the TPM tests need Debian's swtpm and swtpm-tools (make setup)", pytrace=False)
try:
    from device_sim.tpm import TpmProfile, TpmSimDevice
except ImportError as exc:
    pytest.fail(f"tpm2-pytss is not importable ({exc}): pip install -e '.[tpm]' (make setup)", pytrace=False)

pytestmark = pytest.mark.tpm

MANIFEST = parse_source((Path(__file__).resolve().parents[1] / "firmware_manifests" / "edge-gateway"
                         / "manifest.toml").read_text())
POLICY = Policy(device_class="edge-gateway", secure_boot=False, debug="any", required_evidence=("tpm",))
SECRET = b"s" * 32
NONCE = epoch_nonce(SECRET, 5)
SCHEME = TpmScheme()
SOFT_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def honest() -> Iterator[TpmSimDevice]:
    with TpmSimDevice("edge-gateway-0001", seed="unit") as device:
        yield device


def anchor_of(device: TpmSimDevice) -> TrustAnchor:
    return TrustAnchor(device.device_id, device.device_class, load_public_pem(device.public_key_pem.decode()))


SOFT_ANCHOR = TrustAnchor("edge-gateway-0001", "edge-gateway", SOFT_KEY.public_key())


def envelope(raw: bytes) -> dict[int, Any]:
    decoded = cbor2.loads(raw)
    assert isinstance(decoded, dict)
    return decoded


def encode(env: dict[int, Any]) -> bytes:
    return cbor2.dumps(env)


def marshal_attest(a: QuoteAttest) -> bytes:
    out = struct.pack(">IH", a.magic, a.type)
    out += struct.pack(">H", len(a.qualified_signer)) + a.qualified_signer
    out += struct.pack(">H", len(a.extra_data)) + a.extra_data
    c = a.clock_info
    out += struct.pack(">QIIBQ", c.clock, c.reset_count, c.restart_count, int(c.safe), a.firmware_version)
    out += struct.pack(">I", len(a.selections))
    for sel in a.selections:
        bitmap = bytearray(3)
        for i in sel.pcrs:
            bitmap[i // 8] |= 1 << (i % 8)
        out += struct.pack(">HB", sel.hash_alg, 3) + bytes(bitmap)
    return out + struct.pack(">H", len(a.pcr_digest)) + a.pcr_digest


def soft_signature(data: bytes, sig_alg: int = wire.TPM_ALG_ECDSA, hash_alg: int = wire.TPM_ALG_SHA256) -> bytes:
    r, s = decode_dss_signature(SOFT_KEY.sign(data, ec.ECDSA(hashes.SHA256())))
    return struct.pack(">HHH", sig_alg, hash_alg, 32) + r.to_bytes(32, "big") + struct.pack(">H", 32) + s.to_bytes(
        32, "big")


def resigned(raw: bytes, attest: bytes | None = None, **changes: Any) -> bytes:
    """The quote ``raw`` with ``changes`` applied to its TPMS_ATTEST (or ``attest`` verbatim), soft-signed."""
    env = envelope(raw)
    if attest is None:
        attest = marshal_attest(dataclasses.replace(parse_attest(env[wire.TPM_ENV_ATTEST]), **changes))
    env[wire.TPM_ENV_ATTEST] = attest
    env[wire.TPM_ENV_SIGNATURE] = soft_signature(attest)
    return encode(env)


def rejected(raw: bytes, anchor: TrustAnchor = SOFT_ANCHOR) -> EvidenceError:
    with pytest.raises(EvidenceError) as info:
        SCHEME.verify(raw, anchor)
    return info.value


def appraise(claims: Claims, manifest: Manifest | None = MANIFEST, policy: Policy = POLICY,
             state: DeviceState | None = None) -> Any:
    return SCHEME.appraise(claims, AppraisalInputs(manifest, policy, state or DeviceState()))


# --- a genuine quote ---------------------------------------------------------------


def test_honest_quote_verifies_and_is_affirmed(honest: TpmSimDevice) -> None:
    claims = SCHEME.verify(honest.make_evidence(NONCE), anchor_of(honest))
    body = claims.body
    assert isinstance(body, TpmQuoteClaims)
    assert claims.scheme == "tpm" and claims.nonce == NONCE and check_nonce(SECRET, claims.nonce, "x", 5).ok
    release = MANIFEST.release("1.2.0")
    assert release is not None
    assert body.pcrs == ((wire.TPM_BOOT_PCR, expected_boot_pcr(release.components)),)
    info = body.clock_info
    assert claims.counter == (info.reset_count << 32 | info.restart_count, info.clock)
    assert claims.dedup_key == f"{info.reset_count}.{info.restart_count}.{info.clock}"
    appraisal = appraise(claims)
    assert appraisal.trust_vector.tier() is trust.Tier.AFFIRMING and appraisal.problems == ()
    assert appraisal.firmware_version == "1.2.0" and appraisal.state_updates == {"svn_high_water": 3}


def test_registry_finds_the_scheme_by_media_type() -> None:
    assert SchemeRegistry(default_schemes()).find(wire.TPM_MEDIA_TYPE, "evidence") is not None
    assert isinstance(SchemeRegistry(default_schemes()).find(wire.TPM_MEDIA_TYPE, "evidence"), TpmScheme)


def test_a_reset_and_a_restart_raise_the_boot_counter(honest: TpmSimDevice) -> None:
    anchor = anchor_of(honest)
    first = SCHEME.verify(honest.make_evidence(NONCE), anchor)
    honest.reboot()
    after_reset = SCHEME.verify(honest.make_evidence(NONCE), anchor)
    honest.tpm_restart()
    after_restart = SCHEME.verify(honest.make_evidence(NONCE), anchor)
    assert first.counter and after_reset.counter and after_restart.counter
    assert after_reset.counter[0] == (first.counter[0] >> 32) + 1 << 32  # resetCount + 1, restartCount 0
    assert after_restart.counter[0] == after_reset.counter[0] + 1
    assert first.counter < after_reset.counter < after_restart.counter
    assert len({first.dedup_key, after_reset.dedup_key, after_restart.dedup_key}) == 3
    assert appraise(after_restart).firmware_version == "1.2.0"  # the boot measured the same chain again


def test_a_later_quote_has_a_higher_counter_and_a_malleated_copy_keeps_its_dedup_key(honest: TpmSimDevice) -> None:
    anchor = anchor_of(honest)
    raw1, raw2 = honest.make_evidence(NONCE), honest.make_evidence(NONCE)
    first, second = SCHEME.verify(raw1, anchor), SCHEME.verify(raw2, anchor)
    assert first.counter is not None and second.counter is not None and first.counter < second.counter
    env = envelope(raw1)  # ECDSA s -> n - s still verifies: same evidence, other bytes
    sig = env[wire.TPM_ENV_SIGNATURE]
    r_len = struct.unpack(">H", sig[4:6])[0]
    s = int.from_bytes(sig[8 + r_len:], "big")
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    env[wire.TPM_ENV_SIGNATURE] = sig[:6 + r_len] + struct.pack(">H", 32) + (n - s).to_bytes(32, "big")
    assert SCHEME.verify(encode(env), anchor).dedup_key == first.dedup_key


# --- identity and signature --------------------------------------------------------


def test_quote_by_an_unenrolled_ak_is_rejected() -> None:
    with TpmSimDevice("edge-gateway-0002", TpmProfile.UNENROLLED_AK, seed="unit") as device:
        error = rejected(device.make_evidence(NONCE), anchor_of(device))
    assert error.reason == "bad-signature" and not error.authenticated


def test_another_devices_quote_is_rejected(honest: TpmSimDevice) -> None:
    with TpmSimDevice("edge-gateway-0003", seed="unit") as other:
        assert rejected(honest.make_evidence(NONCE), anchor_of(other)).reason == "bad-signature"


@pytest.mark.parametrize("field", [wire.TPM_ENV_ATTEST, wire.TPM_ENV_SIGNATURE])
def test_a_flipped_bit_breaks_the_signature(honest: TpmSimDevice, field: int) -> None:
    env = envelope(honest.make_evidence(NONCE))
    value = bytearray(env[field])
    value[-1] ^= 1
    env[field] = bytes(value)
    assert rejected(encode(env), anchor_of(honest)).reason == "bad-signature"


@pytest.mark.parametrize(("sig_alg", "hash_alg"), [(0x0014, wire.TPM_ALG_SHA256), (0x001A, wire.TPM_ALG_SHA256),
                                                    (wire.TPM_ALG_ECDSA, 0x0004), (wire.TPM_ALG_ECDSA, 0x000C)])
def test_only_ecdsa_with_sha256_is_accepted(honest: TpmSimDevice, sig_alg: int, hash_alg: int) -> None:
    env = envelope(honest.make_evidence(NONCE))
    env[wire.TPM_ENV_SIGNATURE] = soft_signature(env[wire.TPM_ENV_ATTEST], sig_alg, hash_alg)
    assert rejected(encode(env)).reason == "unsupported-signature"


def test_an_enrolled_key_that_is_not_p256_is_refused(honest: TpmSimDevice) -> None:
    anchor = TrustAnchor("edge-gateway-0001", "edge-gateway", ed25519.Ed25519PrivateKey.generate().public_key())
    assert rejected(honest.make_evidence(NONCE), anchor).reason == "unsupported-key"


# --- the signed TPMS_ATTEST --------------------------------------------------------


@pytest.mark.parametrize(("changes", "reason"), [
    ({"magic": 0xFF544348}, "bad-magic"),
    ({"type": 0x8014}, "not-a-quote"),  # TPM_ST_ATTEST_CERTIFY
    ({"selections": (PcrSelection(wire.TPM_ALG_SHA256, (0, 1)),)}, "pcr-selection"),
    ({"selections": (PcrSelection(wire.TPM_ALG_SHA256, (7,)),)}, "pcr-selection"),
    ({"selections": (PcrSelection(0x0004, (0,)),)}, "pcr-selection"),  # the SHA-1 bank
    ({"selections": (PcrSelection(wire.TPM_ALG_SHA256, (0,)), PcrSelection(0x0004, (0,)))}, "pcr-selection"),
    ({"selections": ()}, "pcr-selection"),
    ({"clock_info": ClockInfo(1, 2**31, 0, True)}, "counter-range"),
    ({"clock_info": ClockInfo(2**63, 1, 0, True)}, "counter-range"),
])
def test_a_signed_quote_that_breaks_the_profile_is_the_devices_fault(
        honest: TpmSimDevice, changes: dict[str, Any], reason: str) -> None:
    error = rejected(resigned(honest.make_evidence(NONCE), **changes))
    assert error.reason == reason and error.authenticated


def test_the_resigned_quote_itself_verifies(honest: TpmSimDevice) -> None:
    """The control for the tests above: re-signing alone changes nothing."""
    claims = SCHEME.verify(resigned(honest.make_evidence(NONCE)), SOFT_ANCHOR)
    assert appraise(claims).trust_vector.tier() is trust.Tier.AFFIRMING


@pytest.mark.parametrize(("cut", "reason"), [
    (lambda a: a[:-1], "truncated"),
    (lambda a: a[:5], "truncated"),
    (lambda a: a[:40], "truncated"),
    (lambda a: a + b"\x00", "trailing-bytes"),
    (lambda a: a[:6] + b"\x00\x50" + bytes(80), "oversized"),  # qualifiedSigner longer than a TPM2B_NAME
    (lambda a: a[:6] + b"\x00\x00" + b"\x00\x41" + bytes(65), "oversized"),  # extraData longer than TPMU_HA
])
def test_malformed_attest_structures_are_refused(honest: TpmSimDevice, cut: Any, reason: str) -> None:
    raw = honest.make_evidence(NONCE)
    attest = cut(envelope(raw)[wire.TPM_ENV_ATTEST])
    assert rejected(resigned(raw, attest=attest)).reason == reason


def test_clock_safe_must_be_yes_or_no(honest: TpmSimDevice) -> None:
    raw = honest.make_evidence(NONCE)
    attest = bytearray(envelope(raw)[wire.TPM_ENV_ATTEST])
    parsed = parse_attest(bytes(attest))
    safe_at = 6 + 2 + len(parsed.qualified_signer) + 2 + len(parsed.extra_data) + 16
    attest[safe_at] = 2
    assert rejected(resigned(raw, attest=bytes(attest))).reason == "bad-value"


@pytest.mark.parametrize(("mangle", "reason"), [
    (lambda s: s[:-1], "truncated"),
    (lambda s: s[:3], "truncated"),
    (lambda s: s + b"\x00", "trailing-bytes"),
    (lambda s: s[:4] + b"\x00\x21" + bytes(33) + s[4 + 2 + 32:], "oversized"),
])
def test_malformed_signature_structures_are_refused(honest: TpmSimDevice, mangle: Any, reason: str) -> None:
    env = envelope(honest.make_evidence(NONCE))
    env[wire.TPM_ENV_SIGNATURE] = mangle(env[wire.TPM_ENV_SIGNATURE])
    assert rejected(encode(env), anchor_of(honest)).reason == reason


# --- the unsigned PCR list ---------------------------------------------------------


def test_pcr_values_that_do_not_hash_to_the_quoted_digest_are_rejected() -> None:
    with TpmSimDevice("edge-gateway-0004", TpmProfile.PCR_MISMATCH, seed="unit") as liar:
        error = rejected(liar.make_evidence(NONCE), anchor_of(liar))
    assert error.reason == "pcr-digest-mismatch"
    assert not error.authenticated  # the list is unsigned: whoever altered it, the device cannot be judged by it


def test_an_altered_pcr_value_is_rejected(honest: TpmSimDevice) -> None:
    env = envelope(honest.make_evidence(NONCE))
    env[wire.TPM_ENV_PCRS] = [[wire.TPM_BOOT_PCR, hashlib.sha256(b"other").digest()]]
    assert rejected(encode(env), anchor_of(honest)).reason == "pcr-digest-mismatch"


@pytest.mark.parametrize("pcrs", [[[1, bytes(32)]], [[0, bytes(32)], [1, bytes(32)]]])
def test_a_pcr_list_other_than_the_quoted_selection_is_rejected(honest: TpmSimDevice, pcrs: list[Any]) -> None:
    env = envelope(honest.make_evidence(NONCE))
    env[wire.TPM_ENV_PCRS] = pcrs
    assert rejected(encode(env), anchor_of(honest)).reason == "pcr-list-mismatch"


# --- the CBOR envelope -------------------------------------------------------------


@pytest.mark.parametrize("mutate", [
    lambda e: e.pop(wire.TPM_ENV_PCRS),
    lambda e: e.update({4: b"x"}),
    lambda e: e.update({wire.TPM_ENV_ATTEST: "text"}),
    lambda e: e.update({wire.TPM_ENV_ATTEST: bytes(1025)}),
    lambda e: e.update({wire.TPM_ENV_SIGNATURE: b""}),
    lambda e: e.update({wire.TPM_ENV_PCRS: []}),
    lambda e: e.update({wire.TPM_ENV_PCRS: [[0, bytes(31)]]}),
    lambda e: e.update({wire.TPM_ENV_PCRS: [[True, bytes(32)]]}),
    lambda e: e.update({wire.TPM_ENV_PCRS: [[0, bytes(32)], [0, bytes(32)]]}),
    lambda e: e.update({wire.TPM_ENV_PCRS: [[64, bytes(32)]]}),
    lambda e: e.update({wire.TPM_ENV_PCRS: [[0, bytes(32), 1]]}),
])
def test_a_malformed_envelope_is_rejected(honest: TpmSimDevice, mutate: Any) -> None:
    env = envelope(honest.make_evidence(NONCE))
    mutate(env)
    error = rejected(encode(env), anchor_of(honest))
    assert error.reason == "bad-envelope" and not error.authenticated


@pytest.mark.parametrize("raw", [b"", b"\xa0", cbor2.dumps([1, 2, 3]), bytes(5000)])
def test_bytes_that_are_no_envelope_are_rejected(raw: bytes) -> None:
    assert not rejected(raw).authenticated


def test_trailing_bytes_after_the_envelope_are_rejected(honest: TpmSimDevice) -> None:
    assert rejected(honest.make_evidence(NONCE) + b"\x00", anchor_of(honest)).reason == "trailing-bytes"


def test_a_nonce_the_hub_never_issued_fails_the_freshness_check(honest: TpmSimDevice) -> None:
    claims = SCHEME.verify(honest.make_evidence(b"E" + bytes(31)), anchor_of(honest))
    assert claims.nonce == b"E" + bytes(31)  # extraData is the nonce, exactly
    assert not check_nonce(SECRET, claims.nonce, honest.device_id, 5).ok


# --- appraisal ---------------------------------------------------------------------


def test_an_unapproved_component_is_contraindicated() -> None:
    with TpmSimDevice("edge-gateway-0005", TpmProfile.TAMPERED, seed="unit") as device:
        appraisal = appraise(SCHEME.verify(device.make_evidence(NONCE), anchor_of(device)))
    assert appraisal.trust_vector.executables == trust.EXEC_CONTRAINDICATED
    assert "matches no release" in appraisal.problems[0] and appraisal.firmware_version is None


def test_an_old_release_below_min_svn_is_a_rollback() -> None:
    with TpmSimDevice("edge-gateway-0006", seed="unit", version="1.0.0") as device:
        appraisal = appraise(SCHEME.verify(device.make_evidence(NONCE), anchor_of(device)))
    assert appraisal.trust_vector.executables == trust.EXEC_CONTRAINDICATED
    assert appraisal.firmware_version == "1.0.0" and "rollback" in appraisal.problems[0]


def _with_status(status: str) -> Manifest:
    releases = tuple(dataclasses.replace(r, status=status) if r.version == "1.2.0" else r for r in MANIFEST.releases)
    return dataclasses.replace(MANIFEST, releases=releases)


def test_release_rules_apply_to_the_matched_release(honest: TpmSimDevice) -> None:
    claims = SCHEME.verify(honest.make_evidence(NONCE), anchor_of(honest))
    revoked = appraise(claims, _with_status(wire.RELEASE_REVOKED))
    assert revoked.trust_vector.executables == trust.EXEC_CONTRAINDICATED and "revoked" in revoked.problems[0]
    deprecated = appraise(claims, _with_status(wire.RELEASE_DEPRECATED))
    assert deprecated.trust_vector.tier() is trust.Tier.WARNING
    below = appraise(claims, state=DeviceState(svn_high_water=4))
    assert below.trust_vector.executables == trust.EXEC_CONTRAINDICATED and "rollback" in below.problems[0]
    floor = appraise(claims, policy=dataclasses.replace(POLICY, min_svn=4))
    assert floor.trust_vector.executables == trust.EXEC_CONTRAINDICATED
    pinned = appraise(claims, policy=dataclasses.replace(POLICY, allowed_versions=("1.1.0",)))
    assert "not allowed" in pinned.problems[0]
    missing = appraise(claims, manifest=None)
    assert missing.trust_vector.executables == trust.EXEC_UNRECOGNIZED
    strict = appraise(claims, policy=dataclasses.replace(POLICY, secure_boot=True))
    assert strict.trust_vector.configuration == trust.CONFIG_UNSAFE and strict.trust_vector.tier() is trust.Tier.WARNING


def test_the_tpm_simulator_imports_nothing_from_hub_but_wire() -> None:
    import subprocess
    import sys

    code = "import sys, device_sim.tpm; print(sorted(m for m in sys.modules if m.split('.')[0] == 'hub'))"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "['hub', 'hub.wire']"


@pytest.mark.parametrize("size", [0, 7, 65])
def test_extra_data_outside_the_eat_nonce_sizes_is_refused(honest: TpmSimDevice, size: int) -> None:
    """extraData is the quote's nonce: 8..64 bytes like any eat_nonce (RFC 9711 4.1), never echoed otherwise
    (65 bytes is already beyond what a TPM2B_DATA may hold: the structure decoder refuses it first)."""
    raw = resigned(honest.make_evidence(NONCE), extra_data=b"\x09" * size)
    error = rejected(raw)
    if size == 65:
        assert error.reason == "oversized"
        return
    assert error.reason == "bad-nonce" and error.authenticated and f"got {size}" in error.detail
