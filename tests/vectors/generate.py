"""Regenerate the protocol test vectors and docs/EXAMPLES.md, byte for byte.

    .venv/bin/python tests/vectors/generate.py          # write the files
    .venv/bin/python tests/vectors/generate.py --check  # exit 1 if any file differs

Every key is derived from a fixed label (see ``test_key``), ECDSA signatures
are deterministic (RFC 6979) and Ed25519 is deterministic by design, so the
same code always writes the same bytes. The messages themselves come from the
project's own encoders: evidence payloads from the simulator
(``device_sim.evidence``), commands, results and epochs from
``hub.appraisal.messages``, manifests from ``hub.reference.manifests``; only the signature value
is then recomputed deterministically over the very same protected header and
payload. Invalid cases are built from the valid ones, one defect each.

Vector kinds written here: evidence, commands, results, manifests, epoch
(tests/test_vectors.py checks each against the hub's decoders).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from device_sim import firmware as sim_firmware
from device_sim.evidence import EvidenceClaims, claims_map, encode_payload
from hub import wire
from hub.appraisal.messages import Command, ResultClaims, epoch_message, sign_result, sign_result_jwt
from hub.crypto.freshness import challenge_nonce, epoch_nonce
from hub.crypto.keys import PrivateKey, fingerprint, load_private_pem, public_pem
from hub.reference.manifests import parse_source, sign_manifest
from hub.reference.trust import Tier, TrustVector, crypto_failure

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
EXAMPLES = ROOT / "docs" / "EXAMPLES.md"
OPERATOR_KEY = ROOT / "firmware_manifests" / "keys" / "demo-operator.key.pem"
MANIFEST_SOURCE = ROOT / "firmware_manifests" / "env-sensor" / "manifest.toml"
KINDS = ("evidence", "commands", "results", "manifests", "epoch")

DEVICE = "vec-env-0001"
OTHER_DEVICE = "vec-env-0002"
DEVICE_CLASS = "env-sensor"
T0 = 1767225600  # 2026-01-01T00:00:00Z: every iat in the vectors is T0 plus a little
EPOCH = 7
BOOTCOUNT = 3
SEQ = 42
NONCE_SECRET = hashlib.sha256(b"fleet-attest test vectors: nonce secret").digest()
CHALLENGE_RANDOM = bytes.fromhex("00112233445566")
_HASHES: dict[int, Callable[[], hashes.HashAlgorithm]] = {
    wire.ALG_ES256: hashes.SHA256, wire.ALG_ESP256: hashes.SHA256,
    wire.ALG_ES384: hashes.SHA384, wire.ALG_ES512: hashes.SHA512,
}
_CURVES: dict[str, ec.EllipticCurve] = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1()}
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


# --- keys and signing ---------------------------------------------------------------


def test_key(label: str, kind: str = "p256") -> PrivateKey:
    """``HKDF-SHA256(ikm="fleet-attest test vectors", info=label)`` (80 bytes: a P-curve scalar
    ``int mod 2**(bits - 1) + 1``, always below the group order; 32 bytes: an Ed25519 seed)."""
    length = 32 if kind == "ed25519" else 80
    okm = HKDF(hashes.SHA256(), length, salt=None, info=label.encode()).derive(b"fleet-attest test vectors")
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.from_private_bytes(okm)
    curve = _CURVES[kind]
    scalar = int.from_bytes(okm, "big") % (1 << (curve.key_size - 1)) + 1
    return ec.derive_private_key(scalar, curve)


def raw_signature(key: PrivateKey, alg: int, to_be_signed: bytes) -> bytes:
    """Deterministic raw signature: RFC 6979 ECDSA as ``r || s``, or Ed25519."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(to_be_signed)
    der = key.sign(to_be_signed, ec.ECDSA(_HASHES[alg](), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def tbs(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def sign1(protected: bytes, unprotected: dict[int, Any], payload: bytes, key: PrivateKey, alg: int) -> bytes:
    signature = raw_signature(key, alg, tbs(protected, payload))
    return cbor2.dumps(cbor2.CBORTag(wire.COSE_SIGN1_TAG, [protected, unprotected, payload, signature]))


def parts(message: bytes) -> tuple[bytes, dict[Any, Any], bytes, bytes]:
    item = cbor2.loads(message)
    assert isinstance(item, cbor2.CBORTag) and item.tag == wire.COSE_SIGN1_TAG
    protected, unprotected, payload, signature = item.value
    return protected, dict(unprotected), payload, signature


def deterministic(message: bytes, key: PrivateKey) -> bytes:
    """The same COSE_Sign1 (header and payload bytes untouched) with an RFC 6979 signature."""
    protected, unprotected, payload, _ = parts(message)
    alg = cbor2.loads(protected)[wire.HDR_ALG]
    return sign1(protected, unprotected, payload, key, alg)


def pem(key: PrivateKey) -> str:
    return public_pem(key.public_key())


def private_pem_text(key: PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


# --- CBOR diagnostic notation (RFC 8949 section 8, with << >> for embedded CBOR) ------------


def diag(value: object, indent: int = 0, embed: bool = True) -> str:
    flat = _diag_flat(value, embed)
    if len(flat) + indent <= 100 or not isinstance(value, (Mapping, list, tuple, cbor2.CBORTag, bytes)):
        return flat
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, cbor2.CBORTag):
        return f"{value.tag}({diag(value.value, indent, embed)})"
    if isinstance(value, bytes):
        decoded = _embedded(value) if embed else None
        if decoded is not None:
            return "<<" + diag(decoded, indent, embed) + ">>"
        return flat
    if isinstance(value, Mapping):
        items = [f"{inner}{_diag_flat(k, embed)}: {diag(v, indent + 2, embed)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    items = [inner + diag(v, indent + 2, embed) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + pad + "]"


def _diag_flat(value: object, embed: bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bytes):
        decoded = _embedded(value) if embed else None
        if decoded is not None:
            return "<<" + _diag_flat(decoded, embed) + ">>"
        text = value.decode("ascii", "replace")
        if len(value) >= 4 and text.isprintable() and "/" not in text and "\ufffd" not in text:
            return f"h'{value.hex()}' / {json.dumps(text)} /"
        return f"h'{value.hex()}'"
    if isinstance(value, cbor2.CBORTag):
        return f"{value.tag}({_diag_flat(value.value, embed)})"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_diag_flat(k, embed)}: {_diag_flat(v, embed)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_diag_flat(v, embed) for v in value) + "]"
    raise TypeError(type(value).__name__)


def _embedded(data: bytes) -> object | None:
    """A byte string that is exactly one CBOR map (a header, a payload, a measured component)."""
    if not data or data[0] >> 5 != 5:
        return None
    try:
        value = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) and cbor2.dumps(value) == data else None


def message_diag(raw: bytes) -> str:
    try:
        return diag(cbor2.loads(raw))
    except (cbor2.CBORDecodeError, ValueError, TypeError):
        return "(not well-formed CBOR; see cose_hex)"


# --- CBOR by hand (for the encodings cbor2 refuses to write) --------------------------------


def head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for size, code in ((1, 24), (2, 25), (4, 26), (8, 27)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | code]) + n.to_bytes(size, "big")
    raise ValueError(n)


def map_with_pairs(pairs: Sequence[tuple[object, object]]) -> bytes:
    """A CBOR map holding ``pairs`` in order, duplicates kept."""
    return head(5, len(pairs)) + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in pairs)


# --- the vector record ----------------------------------------------------------------------


@dataclass
class Vector:
    kind: str
    name: str
    description: str
    cose: bytes
    public_key_pem: str
    expected: str
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        record: dict[str, Any] = {
            "description": self.description,
            "kind": self.kind,
            "expected": self.expected,
        }
        if self.expected == "invalid":
            record["reason"] = self.reason
        record["cose_hex"] = self.cose.hex()
        record["public_key_pem"] = self.public_key_pem
        record.update(self.extra)
        record["diag"] = message_diag(self.cose)
        return json.dumps(record, indent=2, ensure_ascii=False) + "\n"


# --- evidence -------------------------------------------------------------------------------


def device_key(device_id: str, kind: str = "p256") -> PrivateKey:
    return test_key(f"device-key/{kind}/{device_id}", kind)


def device_ueid(device_id: str) -> bytes:
    return b"\x01" + hashlib.sha256(f"ueid/{device_id}".encode()).digest()[:16]


def honest_claims(device_id: str = DEVICE) -> EvidenceClaims:
    return EvidenceClaims(
        device_class=DEVICE_CLASS,
        ueid=device_ueid(device_id),
        nonce=epoch_nonce(NONCE_SECRET, EPOCH),
        bootcount=BOOTCOUNT,
        seq=SEQ,
        iat=T0 + 30,
        sw_name=sim_firmware.sw_name(DEVICE_CLASS),
        sw_version="1.2.0",
        measurements=sim_firmware.measurements(DEVICE_CLASS, "1.2.0"),
    )


def evidence_protected(alg: int, kid: bytes = DEVICE.encode()) -> bytes:
    return cbor2.dumps({wire.HDR_ALG: alg, wire.HDR_KID: kid})


def evidence_vectors() -> Iterator[Vector]:
    key = device_key(DEVICE)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    key_pem = pem(key)
    claims = honest_claims()
    payload = encode_payload(claims)
    protected = evidence_protected(wire.ALG_ES256)
    honest = sign1(protected, {}, payload, key, wire.ALG_ES256)
    common = {
        "device_id": DEVICE,
        "device_class": DEVICE_CLASS,
        "anchor_ueid_hex": claims.ueid.hex(),
    }

    def vec(name: str, description: str, raw: bytes, *, reason: str = "", authenticated: bool = False,
            key_pem_: str = key_pem, **extra: Any) -> Vector:
        fields: dict[str, Any] = dict(common)
        if reason:
            fields["authenticated"] = authenticated
        fields.update(extra)
        return Vector("evidence", name, description, raw, key_pem_, "invalid" if reason else "valid", reason, fields)

    def signed_claims(mutate: Callable[[dict[int, Any]], None]) -> bytes:
        body = claims_map(claims)
        mutate(body)
        return sign1(protected, {}, cbor2.dumps(body), key, wire.ALG_ES256)

    def claims_diag(raw: bytes) -> str:
        return diag(cbor2.loads(parts(raw)[2]))

    expected = {
        "bootcount": BOOTCOUNT, "seq": SEQ, "swversion": "1.2.0", "iat": T0 + 30,
        "nonce_hex": claims.nonce.hex(), "dedup_key": f"{BOOTCOUNT}:{SEQ}",
        "components": [{"name": m.name, "version": m.version, "digest_hex": m.digest.hex()}
                       for m in claims.measurements],
    }
    freshness = {"nonce_secret_hex": NONCE_SECRET.hex(), "current_epoch": EPOCH, "nonce_kind": "epoch"}
    yield vec("valid-es256", "Honest firmware evidence from the simulator's encoder, ES256, epoch nonce.", honest,
              claims_diag=claims_diag(honest), expected_claims=expected, freshness=freshness)

    # ECDSA malleability: (r, n - s) verifies too; the dedup key comes from the payload, so it is the same evidence.
    p, u, pl, sig = parts(honest)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    high_s = sig[:32] + (P256_ORDER - s).to_bytes(32, "big")
    assert r
    yield vec("valid-es256-high-s", "The honest evidence with s replaced by n - s: still verifies; same dedup key "
              "(3:42), so the hub treats it as a duplicate, never as new evidence.",
              cbor2.dumps(cbor2.CBORTag(18, [p, u, pl, high_s])), expected_claims=expected)
    yield vec("valid-unprotected-extra", "The honest evidence with a content type (3) added to the unprotected "
              "header by someone on the path: different bytes, same signed payload, still valid.",
              cbor2.dumps(cbor2.CBORTag(18, [p, {wire.HDR_CONTENT_TYPE: "application/eat+cwt"}, pl, sig])),
              expected_claims=expected)
    for kind, alg, name in (("p384", wire.ALG_ES384, "es384"), ("p521", wire.ALG_ES512, "es512"),
                            ("p256", wire.ALG_ESP256, "esp256"), ("ed25519", wire.ALG_EDDSA, "eddsa"),
                            ("ed25519", wire.ALG_ED25519, "ed25519")):
        other = device_key(DEVICE, kind)
        raw = sign1(evidence_protected(alg), {}, payload, other, alg)
        yield vec(f"valid-{name}", f"The honest claims signed with a {kind.upper()} device key, alg {alg}.", raw,
                  key_pem_=pem(other), expected_claims=expected)
    unknown = signed_claims(lambda c: c.__setitem__(-65599, "x" * 15000))
    yield vec("valid-unknown-claim", "An unknown claim (-65599, 15000 characters) is ignored; the message stays "
              "under 16 KiB.", unknown, expected_claims=expected)

    # --- not authenticated: decoding, header and signature failures --------------------------
    forged = sign1(protected, {}, payload, test_key(f"forged-key/{DEVICE}"), wire.ALG_ES256)
    yield vec("wrong-key", "Signed with a key that is not the enrolled one (kid still the device id).", forged,
              reason="bad-signature")
    yield vec("alg-unprotected", "alg only in the unprotected header (signature valid over a protected header "
              "without alg).", sign1(cbor2.dumps({wire.HDR_KID: DEVICE.encode()}), {wire.HDR_ALG: wire.ALG_ES256},
                                     payload, key, wire.ALG_ES256), reason="alg-unprotected")
    yield vec("alg-missing", "No alg in either header.",
              sign1(cbor2.dumps({wire.HDR_KID: DEVICE.encode()}), {}, payload, key, wire.ALG_ES256),
              reason="alg-missing")
    yield vec("alg-unknown", "alg -257 (RS256) in the protected header: not an accepted algorithm.",
              sign1(evidence_protected(-257), {}, payload, key, wire.ALG_ES256), reason="alg-unsupported")
    crit = cbor2.dumps({wire.HDR_ALG: wire.ALG_ES256, wire.HDR_CRIT: [-65601], wire.HDR_KID: DEVICE.encode(),
                        -65601: 1})
    yield vec("crit-present", "A crit (2) header naming an extension label: refused (no critical extensions are "
              "defined).", sign1(crit, {}, payload, key, wire.ALG_ES256), reason="crit-unknown")
    yield vec("x5chain-unprotected", "An x5chain (33) in the unprotected header.",
              cbor2.dumps(cbor2.CBORTag(18, [p, {wire.HDR_X5CHAIN: b"\x30\x00"}, pl, sig])),
              reason="x5chain-unprotected")
    yield vec("label-in-both-headers", "kid in the protected and the unprotected header.",
              cbor2.dumps(cbor2.CBORTag(18, [p, {wire.HDR_KID: OTHER_DEVICE.encode()}, pl, sig])),
              reason="header-duplicate")
    yield vec("trailing-bytes", "The honest evidence followed by one extra byte (0x00).", honest + b"\x00",
              reason="trailing-bytes")
    tampered_payload = encode_payload(replace(claims, seq=SEQ + 1))
    yield vec("tampered-payload", "The payload changed after signing (seq 42 -> 43), signature kept.",
              cbor2.dumps(cbor2.CBORTag(18, [p, u, tampered_payload, sig])), reason="bad-signature")
    reordered = cbor2.dumps({wire.HDR_KID: DEVICE.encode(), wire.HDR_ALG: wire.ALG_ES256})
    yield vec("tampered-protected", "The protected header re-encoded with its two labels swapped: the same map, "
              "other bytes; the signature covers the bytes as sent, so it fails.",
              cbor2.dumps(cbor2.CBORTag(18, [reordered, u, pl, sig])), reason="bad-signature")
    other_key = device_key(OTHER_DEVICE)
    other_claims = honest_claims(OTHER_DEVICE)
    other_raw = sign1(evidence_protected(wire.ALG_ES256, OTHER_DEVICE.encode()), {}, encode_payload(other_claims),
                      other_key, wire.ALG_ES256)
    yield vec("kid-other-device", f"Genuine evidence of {OTHER_DEVICE} (its key, its kid) published on "
              f"{DEVICE}'s topic; the hub verifies with {DEVICE}'s key (public_key_pem).", other_raw,
              reason="kid-mismatch", signer_public_key_pem=pem(other_key))
    yield vec("kid-missing", "No kid in the protected header.",
              sign1(cbor2.dumps({wire.HDR_ALG: wire.ALG_ES256}), {}, payload, key, wire.ALG_ES256),
              reason="kid-mismatch")
    yield vec("untagged", "The COSE_Sign1 array without tag 18.", cbor2.dumps([p, u, pl, sig]),
              reason="not-cose-sign1")
    yield vec("wrong-tag", "The array under tag 98 (COSE_Sign) instead of 18: an unknown tag is a decoding error.",
              cbor2.dumps(cbor2.CBORTag(98, [p, u, pl, sig])), reason="malformed-cbor")
    indefinite = b"\xd2\x9f" + b"".join(cbor2.dumps(x) for x in (p, u, pl, sig)) + b"\xff"
    yield vec("indefinite-array", "The COSE_Sign1 array with indefinite length (0x9f ... 0xff).", indefinite,
              reason="malformed-cbor")
    yield vec("duplicate-unprotected-key", "The unprotected map holds label 3 twice.",
              b"\xd2\x84" + cbor2.dumps(p) + map_with_pairs([(3, "a"), (3, "b")]) + cbor2.dumps(pl) + cbor2.dumps(sig),
              reason="malformed-cbor")
    pairs = list(claims_map(claims).items())
    pairs.insert(2, (wire.NONCE, epoch_nonce(NONCE_SECRET, EPOCH - 1)))
    dup_payload = map_with_pairs(pairs)
    yield vec("duplicate-claim-key", "The signed claims map holds the nonce (10) twice: a validly signed but "
              "ambiguous payload, refused when decoding the claims (authenticated: the device signed it).",
              sign1(protected, {}, dup_payload, key, wire.ALG_ES256), reason="malformed-cbor", authenticated=True)
    yield vec("duplicate-protected-label", "The protected header map holds alg twice.",
              sign1(map_with_pairs([(1, -7), (4, DEVICE.encode()), (1, -7)]), {}, payload, key, wire.ALG_ES256),
              reason="bad-header")
    deep: object = 0
    for _ in range(6):
        deep = [deep]
    yield vec("nesting-too-deep", "An unprotected header value nested six arrays deep (the message may nest 4).",
              cbor2.dumps(cbor2.CBORTag(18, [p, {-65602: deep}, pl, sig])), reason="malformed-cbor")
    deeper: object = 0
    for _ in range(9):
        deeper = [deeper]
    yield vec("nesting-too-deep-claims", "A signed claim nested nine arrays deep (claims may nest 8).",
              signed_claims(lambda c: c.__setitem__(-65603, deeper)), reason="malformed-cbor", authenticated=True)
    yield vec("oversized", "Validly signed evidence of more than 16 KiB (an unknown 17000-character claim).",
              signed_claims(lambda c: c.__setitem__(-65599, "x" * 17000)), reason="too-large")
    yield vec("detached-payload", "Payload nil (detached): not accepted.",
              cbor2.dumps(cbor2.CBORTag(18, [p, u, None, sig])), reason="detached-payload")
    der = encode_dss_signature(r, s)
    yield vec("der-signature", "The signature DER-encoded (ASN.1 SEQUENCE of r and s) instead of raw r || s.",
              cbor2.dumps(cbor2.CBORTag(18, [p, u, pl, der])), reason="bad-signature")
    yield vec("signature-short", "A 63-byte signature (the last byte dropped).",
              cbor2.dumps(cbor2.CBORTag(18, [p, u, pl, sig[:-1]])), reason="bad-signature")
    p384 = device_key(DEVICE, "p384")
    assert isinstance(p384, ec.EllipticCurvePrivateKey)
    mismatch_sig = raw_signature(p384, wire.ALG_ES384, tbs(protected, payload))
    yield vec("es256-with-p384-key", "alg ES256 (-7) but the enrolled key is P-384 (signed with it, SHA-384): an "
              "algorithm the key was not made for is refused.",
              cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, mismatch_sig])), reason="alg-key-mismatch",
              key_pem_=pem(p384))

    # --- authenticated: the device signed something that breaks the profile -------------------
    def claim_case(name: str, description: str, mutate: Callable[[dict[int, Any]], None], reason: str) -> Vector:
        raw = signed_claims(mutate)
        return vec(name, description, raw, reason=reason, authenticated=True, claims_diag=claims_diag(raw))

    yield claim_case("float-iat", "iat (6) as a floating-point number.",
                     lambda c: c.__setitem__(wire.IAT, float(T0 + 30)), "bad-claim")
    yield claim_case("missing-nonce", "No nonce (10).", lambda c: c.pop(wire.NONCE), "missing-claim")
    yield claim_case("missing-bootcount", "No bootcount (267).", lambda c: c.pop(wire.BOOTCOUNT), "missing-claim")
    yield claim_case("negative-seq", "Evidence sequence (-65537) negative.",
                     lambda c: c.__setitem__(wire.EVIDENCE_SEQ, -1), "bad-claim")
    yield claim_case("wrong-profile", "eat_profile (265) names another profile.",
                     lambda c: c.__setitem__(wire.EAT_PROFILE, wire.DATA_PROFILE), "wrong-profile")
    yield claim_case("dbgstat-out-of-range", "dbgstat (263) = 5.", lambda c: c.__setitem__(wire.DBGSTAT, 5),
                     "bad-claim")
    yield claim_case("oemboot-not-bool", "oemboot (262) = 1 instead of true.",
                     lambda c: c.__setitem__(wire.OEMBOOT, 1), "bad-claim")

    def short_digest(c: dict[int, Any]) -> None:
        c[wire.MEASUREMENTS][0][1] = cbor2.dumps({wire.MC_ID: ["bootloader", "1.2.0"],
                                                  wire.MC_MEASUREMENT: [wire.SHA256, bytes(31)]})

    yield claim_case("bad-measured-component", "A measured component whose SHA-256 digest is 31 bytes.",
                     short_digest, "bad-claim")

    def wrong_format(c: dict[int, Any]) -> None:
        c[wire.MEASUREMENTS][0][0] = 10001

    yield claim_case("measurement-wrong-content-format", "A measurements (273) entry with content-format 10001.",
                     wrong_format, "bad-claim")
    yield claim_case("ueid-mismatch", "A UEID (256) other than the one bound at enrolment (anchor_ueid_hex).",
                     lambda c: c.__setitem__(wire.UEID, device_ueid(OTHER_DEVICE)), "ueid-mismatch")


# --- hub messages ---------------------------------------------------------------------------


def hub_key() -> PrivateKey:
    return test_key("hub-signing-key")


def hub_kid(key: PrivateKey) -> bytes:
    return fingerprint(key.public_key())[:16].encode()


def command_vectors() -> Iterator[Vector]:
    key = hub_key()
    kid = hub_kid(key)
    issued = T0 + 60
    ttl = 7 * 24 * 3600

    def vec(name: str, description: str, command: Command, *, now: int, last: int | None, reason: str = "",
            signer: PrivateKey | None = None, raw: bytes | None = None) -> Vector:
        signed = raw if raw is not None else deterministic(command.sign(signer or key, kid), signer or key)
        extra: dict[str, Any] = {"device_id": DEVICE, "now": now, "last_applied_seq": last,
                                 "hub_kid": kid.decode()}
        if not reason:
            extra["expected_command"] = {
                "type": command.kind, "sub": command.device_id, "seq": command.seq, "iat": command.issued_at,
                "exp": command.expires_at, "state_changing": command.state_changing,
                **({"nonce_hex": command.nonce.hex()} if command.nonce else {}),
                **({"receipts": [list(r) for r in command.receipts]} if command.receipts else {}),
                **({"release_name": command.release_name} if command.release_name else {}),
            }
        return Vector("commands", name, description, signed, pem(key), "invalid" if reason else "valid", reason,
                      extra)

    quarantine = Command(DEVICE, wire.COMMAND_QUARANTINE, 5, issued, issued + ttl,
                         "component 'app' digest bd8237923f303e53… is in no manifest")
    yield vec("valid-quarantine", "Quarantine, state command seq 5 (the device last applied 4).", quarantine,
              now=issued + 5, last=4)
    release = Command(DEVICE, wire.COMMAND_RELEASE, 6, issued + 600, issued + 600 + ttl, "attested affirming")
    yield vec("valid-release", "Release after clean evidence, seq 6.", release, now=issued + 605, last=5)
    nonce = challenge_nonce(NONCE_SECRET, DEVICE, EPOCH, CHALLENGE_RANDOM)
    challenge = Command(DEVICE, wire.COMMAND_CHALLENGE, 7, issued + 700, issued + 760, "on-demand attestation",
                        nonce=nonce)
    yield vec("valid-challenge", "Challenge: answer with evidence whose nonce (10) is this nonce. Not a state "
              "command, so seq is not compared.", challenge, now=issued + 701, last=6)
    receipt = Command(DEVICE, wire.COMMAND_RECEIPT, 8, issued + 800, issued + 800 + ttl,
                      receipts=((BOOTCOUNT, SEQ - 1), (BOOTCOUNT, SEQ)))
    yield vec("valid-receipt", "Receipt: evidence (3, 41) and (3, 42) are committed; stop re-sending them.",
              receipt, now=issued + 801, last=6)
    remediate = Command(DEVICE, wire.COMMAND_REMEDIATE, 9, issued + 900, issued + 900 + ttl, "install 1.2.0",
                        release_name="1.2.0")
    yield vec("valid-remediate", "Remediate: install release 1.2.0; state command seq 9.", remediate,
              now=issued + 901, last=6)
    yield vec("forged", "A quarantine signed by a key other than the hub's, with the hub's kid.", quarantine,
              now=issued + 5, last=4, signer=test_key("not-the-hub"), reason="bad-signature")
    yield vec("expired", "The quarantine command, received after its exp (now > exp).", quarantine,
              now=issued + ttl + 1, last=4, reason="expired")
    yield vec("expired-at-exp", "The quarantine command at exactly its exp: exp must be in the future.", quarantine,
              now=issued + ttl, last=4, reason="expired")
    yield vec("misaddressed", f"A genuine command for {OTHER_DEVICE}, received by {DEVICE}.",
              replace(quarantine, device_id=OTHER_DEVICE), now=issued + 5, last=4, reason="misaddressed")
    yield vec("replayed-state-command", "The retained quarantine (seq 5) delivered again after the device applied "
              "it: applied once, then ignored.", quarantine, now=issued + 10, last=5, reason="replayed")
    payload = quarantine.payload()
    unprot = sign1(cbor2.dumps({wire.HDR_KID: kid}), {wire.HDR_ALG: wire.ALG_ES256}, payload, key, wire.ALG_ES256)
    yield vec("alg-unprotected", "A command whose alg is only in the unprotected header.", quarantine,
              now=issued + 5, last=4, raw=unprot, reason="alg-unprotected")


def result_claims() -> list[tuple[str, str, ResultClaims, bool]]:
    good = TrustVector(instance_identity=2, configuration=2, executables=2, hardware=2)
    bad = TrustVector(instance_identity=2, configuration=2, executables=96, hardware=2)
    return [
        ("valid-affirming", "An affirming firmware result (retained on fleet/{id}/result); it echoes the "
         "evidence's nonce (10).",
         ResultClaims(DEVICE, "firmware", good, good.tier(), T0 + 31, (), f"{BOOTCOUNT}:{SEQ}", "env-sensor#1",
                      "env-sensor@1", "affirm", nonce=epoch_nonce(NONCE_SECRET, EPOCH)), True),
        ("valid-contraindicated", "A contraindicated result that quarantined the device (retained).",
         ResultClaims(DEVICE, "firmware", bad, bad.tier(), T0 + 91, (
             "component 'app' digest 0a3bd4bd3f0ab0b2… is in no manifest",), f"{BOOTCOUNT}:{SEQ + 1}",
             "env-sensor#1", "env-sensor@1", "quarantine", nonce=epoch_nonce(NONCE_SECRET, EPOCH)), True),
        ("valid-rejected", "The result for evidence that did not authenticate: AR4SI 99 on every claim; published "
         "NOT retained, and the device's status is untouched.",
         ResultClaims(DEVICE, "firmware", crypto_failure(), Tier.CONTRAINDICATED, T0 + 95,
                      ("bad-signature: signature does not verify",), "raw:" + "00" * 16, None, "?@0",
                      "none"), False),
    ]


def result_vectors() -> Iterator[Vector]:
    key = hub_key()
    kid = hub_kid(key)
    for name, description, result, retained in result_claims():
        signed = deterministic(sign_result(result, key, kid), key)
        yield Vector("results", name, description, signed, pem(key), "valid", "", {
            "device_id": DEVICE, "retained": retained, "hub_kid": kid.decode(),
            "jwt": sign_result_jwt(result, key, kid),
            "expected_result": {"tier": int(result.tier), "trust_vector": {str(k): v for k, v in
                                                                           result.trust_vector.to_cbor().items()},
                                "action": result.action, "evidence_ref": result.evidence_ref,
                                "manifest_ref": result.manifest_ref, "policy_ref": result.policy_ref,
                                "problems": list(result.problems),
                                "nonce_hex": result.nonce.hex() if result.nonce is not None else None},
        })
    name, _, result, _ = result_claims()[0]
    p, u, pl, sig = parts(deterministic(sign_result(result, key, kid), key))
    body = cbor2.loads(pl)
    body[wire.IAT] = T0 + 3600
    yield Vector("results", "tampered", "The affirming result with iat moved forward by an hour, signature kept "
                 "(a stale result made to look fresh).", cbor2.dumps(cbor2.CBORTag(18, [p, u, cbor2.dumps(body), sig])),
                 pem(key), "invalid", "bad-signature", {"device_id": DEVICE, "hub_kid": kid.decode()})
    forged = deterministic(sign_result(result, test_key("not-the-hub"), kid), test_key("not-the-hub"))
    yield Vector("results", "forged", "An affirming result signed by a key other than the hub's.", forged, pem(key),
                 "invalid", "bad-signature", {"device_id": DEVICE, "hub_kid": kid.decode()})


def epoch_vectors() -> Iterator[Vector]:
    key = hub_key()
    kid = hub_kid(key)
    nonce = epoch_nonce(NONCE_SECRET, EPOCH)
    extra = {"hub_kid": kid.decode(), "nonce_secret_hex": NONCE_SECRET.hex(),
             "expected_epoch": {"epoch": EPOCH, "nonce_hex": nonce.hex(), "iat": T0}}
    yield Vector("epoch", "valid", "The retained epoch announcement on hub/epoch: epoch 7 and its nonce.",
                 deterministic(epoch_message(EPOCH, nonce, T0, key, kid), key), pem(key), "valid", "", extra)
    forger = test_key("not-the-hub")
    forged_nonce = b"E" + EPOCH.to_bytes(8, "big") + bytes(23)
    yield Vector("epoch", "forged", "An epoch announcement signed by another key (kid copied from the hub).",
                 deterministic(epoch_message(EPOCH, forged_nonce, T0, forger, kid), forger), pem(key), "invalid",
                 "bad-signature", {"hub_kid": kid.decode(), "nonce_secret_hex": NONCE_SECRET.hex()})


def operator_key() -> PrivateKey:
    return load_private_pem(OPERATOR_KEY.read_bytes())


def manifest_vectors() -> Iterator[Vector]:
    key = operator_key()
    source = MANIFEST_SOURCE.read_text()
    manifest = parse_source(source)
    signed = deterministic(sign_manifest(manifest, key, issued_at=T0), key)
    trusted = [pem(key)]
    fp = fingerprint(key.public_key())
    info = {"device_class": manifest.device_class, "sequence": manifest.sequence, "min_svn": manifest.min_svn,
            "releases": [{"version": r.version, "svn": r.svn, "status": r.status,
                          "components": {c.name: c.digest.hex() for c in r.components}} for r in manifest.releases]}
    yield Vector("manifests", "valid", "firmware_manifests/env-sensor/manifest.toml signed with the demo operator "
                 "key (firmware_manifests/keys/demo-operator.pub.pem), issued_at fixed.", signed, pem(key), "valid",
                 "", {"trusted_keys_pem": trusted, "operator_kid": fp, "source_toml": source,
                      "expected_manifest": info})
    stranger = test_key("untrusted-operator")
    untrusted = deterministic(sign_manifest(manifest, stranger, issued_at=T0), stranger)
    yield Vector("manifests", "untrusted-signer", "The same manifest signed by an operator key the hub does not "
                 "trust (public_key_pem is the signer's; trusted_keys_pem is what the hub trusts).", untrusted,
                 pem(stranger), "invalid", "untrusted-signer", {"trusted_keys_pem": trusted})
    p, u, pl, sig = parts(signed)
    body = cbor2.loads(pl)
    body[wire.MF_MIN_SVN] = 0
    yield Vector("manifests", "tampered", "The valid manifest with min_svn lowered to 0 after signing.",
                 cbor2.dumps(cbor2.CBORTag(18, [p, u, cbor2.dumps(body), sig])), pem(key), "invalid",
                 "bad-signature", {"trusted_keys_pem": trusted})
    newer = replace(manifest, sequence=manifest.sequence + 1)
    held = deterministic(sign_manifest(newer, key, issued_at=T0 + 86400), key)
    yield Vector("manifests", "lower-sequence", "A genuine manifest with sequence 1 offered to a hub that holds "
                 "sequence 2 for the class. It decodes and verifies (expected: valid): the sequence rule belongs "
                 "to the store (hub.reference.values.References.offer_manifest), which refuses it as a rollback.",
                 signed, pem(key), "valid", "", {
                     "trusted_keys_pem": trusted, "held_cose_hex": held.hex(), "held_sequence": newer.sequence,
                     "store_expected": "refused", "store_reason": "rollback"})
    yield Vector("manifests", "same-sequence", "The held manifest (sequence 2) offered again, e.g. a retained "
                 "announcement re-delivered: not an error, and not adopted a second time.", held, pem(key), "valid",
                 "", {"trusted_keys_pem": trusted, "held_cose_hex": held.hex(), "held_sequence": newer.sequence,
                      "store_expected": "ignored", "store_reason": "not-newer"})


GENERATORS: dict[str, Callable[[], Iterator[Vector]]] = {
    "evidence": evidence_vectors, "commands": command_vectors, "results": result_vectors,
    "manifests": manifest_vectors, "epoch": epoch_vectors,
}


def all_vectors() -> list[Vector]:
    return [v for kind in KINDS for v in GENERATORS[kind]()]


# --- docs/EXAMPLES.md -------------------------------------------------------------------------


def examples_markdown(vectors: list[Vector]) -> str:
    by = {(v.kind, v.name): v for v in vectors}
    sections = [
        ("Firmware evidence", ("evidence", "valid-es256"), "fleet/vec-env-0001/evidence",
         f"Signed by the device key of `{DEVICE}` (ES256). Payload built by `device_sim.evidence.encode_payload`; "
         f"the nonce is the epoch-{EPOCH} nonce of the test nonce secret."),
        ("Command: quarantine", ("commands", "valid-quarantine"), "fleet/vec-env-0001/cmd",
         "Built by `hub.appraisal.messages.Command.sign` with the test hub key; retained."),
        ("Command: challenge", ("commands", "valid-challenge"), "fleet/vec-env-0001/cmd",
         "A challenge nonce (layout in PROTOCOL.md) for this device in epoch 7; not retained."),
        ("Command: receipt", ("commands", "valid-receipt"), "fleet/vec-env-0001/cmd", "Not retained."),
        ("Attestation result (EAR)", ("results", "valid-affirming"), "fleet/vec-env-0001/result",
         "Built by `hub.appraisal.messages.sign_result`; retained."),
        ("Attestation result for evidence that did not authenticate", ("results", "valid-rejected"),
         "fleet/vec-env-0001/result", "Not retained."),
        ("Epoch", ("epoch", "valid"), "hub/epoch", "Built by `hub.appraisal.messages.epoch_message`; retained."),
        ("Signed manifest", ("manifests", "valid"), "hub/manifests/env-sensor",
         "Built by `hub.reference.manifests.sign_manifest` from `firmware_manifests/env-sensor/manifest.toml` "
         "with the demo operator key; retained."),
    ]
    out = [
        "# Worked examples",
        "",
        "<!-- Written by tests/vectors/generate.py: do not edit by hand. -->",
        "",
        "Real messages, byte for byte, as described in [PROTOCOL.md](PROTOCOL.md). Each is also a test vector "
        "under `tests/vectors/` (file named in each section) that `tests/test_vectors.py` runs through the hub's "
        "own verifier. ECDSA signatures here are deterministic (RFC 6979) so that the files can be regenerated "
        "exactly; a verifier must accept any valid signature, randomised or not.",
        "",
        "## Test keys",
        "",
        "Test keys only: never enrol or trust them in a real deployment. They are derived by `test_key` in "
        "`tests/vectors/generate.py` (`HKDF-SHA256(ikm=\"fleet-attest test vectors\", info=label)`); the "
        "manifest key is the repository's demo operator key. The private keys are given so that a firmware "
        "signer can be checked against the vectors: with RFC 6979 signing it must reproduce the same bytes.",
        "",
    ]
    for label, key in (
        (f"device `{DEVICE}` (P-256, label `device-key/p256/{DEVICE}`)", device_key(DEVICE)),
        ("hub signing key (P-256, label `hub-signing-key`)", hub_key()),
    ):
        out += [f"### {label}", "", "```", private_pem_text(key).strip(), pem(key).strip(), "```", ""]
    kid = hub_kid(hub_key()).decode()
    out += [
        f"Hub kid (first 16 hex digits of the SHA-256 of its SubjectPublicKeyInfo): `{kid}`.",
        "",
        f"Nonce secret (hub side, 32 bytes): `{NONCE_SECRET.hex()}`; epoch {EPOCH} nonce: "
        f"`{epoch_nonce(NONCE_SECRET, EPOCH).hex()}`.",
        "",
        f"Operator key: `firmware_manifests/keys/demo-operator.pub.pem`, kid (full SPKI fingerprint) "
        f"`{fingerprint(operator_key().public_key())}`.",
        "",
    ]
    sections_out: list[str] = []
    for title, where, topic, note in sections:
        vector = by[where]
        if where == ("results", "valid-rejected"):
            sections_out = out
            out = []
        out += [
            f"## {title}",
            "",
            f"Topic `{topic}`. {note} Vector: `tests/vectors/{vector.kind}/{vector.name}.json`.",
            "",
            "```cbor-diag",
            message_diag(vector.cose),
            "```",
            "",
            f"{len(vector.cose)} bytes:",
            "",
            "```",
            *_wrap_hex(vector.cose.hex()),
            "```",
            "",
        ]
    return "\n".join(sections_out + _jwt_section(by[("results", "valid-affirming")]) + out).rstrip() + "\n"


def _jwt_section(vector: Vector) -> list[str]:
    """The affirming result as the JWT EAR ``attest-hub result show --format jwt`` prints."""
    token = str(vector.extra["jwt"])
    head, body, _ = token.split(".")

    def decoded(part: str) -> str:
        return json.dumps(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))), indent=2)

    return [
        "## Attestation result as a JWT (EAR)",
        "",
        "The same affirming result as above, as `attest-hub result show vec-env-0001 --format jwt` prints it "
        "(the HTTP API's `GET /v1/devices/vec-env-0001/result` answers `Accept: application/eat+jwt` in this "
        "form too, with the claims of the CWT the device got, its `eat_nonce` included, and a signature of its "
        "own): "
        "a JWS compact serialization (RFC 7515), ES256 with the test hub key, deterministic signature. "
        f"Vector: `tests/vectors/results/{vector.name}.json` (field `jwt`). Header:",
        "",
        "```json",
        decoded(head),
        "```",
        "",
        "Claims:",
        "",
        "```json",
        decoded(body),
        "```",
        "",
        f"Token ({len(token)} characters):",
        "",
        "```",
        *_wrap_hex(token),
        "```",
        "",
    ]


def _wrap_hex(text: str, width: int = 96) -> list[str]:
    return [text[i : i + width] for i in range(0, len(text), width)]


# --- main -----------------------------------------------------------------------------------


def outputs() -> dict[Path, str]:
    vectors = all_vectors()
    files = {VECTORS / v.kind / f"{v.name}.json": v.to_json() for v in vectors}
    assert len(files) == len(vectors), "two vectors share a name"
    files[EXAMPLES] = examples_markdown(vectors)
    return files


def main(argv: list[str]) -> int:
    files = outputs()
    if "--check" in argv:
        stale = [str(path.relative_to(ROOT)) for path, text in files.items()
                 if not path.exists() or path.read_text(encoding="utf-8") != text]
        for name in stale:
            print(f"differs: {name}")
        return 1 if stale else 0
    for kind in KINDS:
        for old in (VECTORS / kind).glob("*.json"):
            if old not in files:
                old.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
