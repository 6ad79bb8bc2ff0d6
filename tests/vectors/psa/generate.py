"""Write the PSA token test vectors (RFC 9783) in this folder: ``python tests/vectors/psa/generate.py``.

Built by hand from the RFC's claim structure with ``cbor2`` and ``cryptography`` only (neither the
hub's nor the simulator's encoder), signed with deterministic ECDSA (RFC 6979) so a rerun writes the
same bytes. Each ``<name>.json`` holds ``description``, ``cose_hex`` (the whole tagged COSE_Sign1),
``public_key_pem``, ``enrolled_instance_id_hex`` (the UEID bound at enrolment), ``expected``
("valid" or "invalid"), ``reason`` (the hub's reason code) and ``claims_diag``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

HERE = Path(__file__).resolve().parent
PROFILE = "tag:psacertified.org,2023:psa#tfm"
NONCE, UEID, PROFILE_KEY = 10, 256, 265
CLIENT_ID, LIFECYCLE, IMPL_ID, CERT_REF, SW_COMPONENTS, VSI = 2394, 2395, 2396, 2398, 2399, 2400
BOOT_SEED = 268  # EAT bootseed (RFC 9711 4.2.13), as RFC 9783 uses it
LEGACY_BOOT_SEED = 2397  # the boot seed of profile http://arm.com/psa/2.0.0, unknown in psa#tfm
P1 = {"profile": -75000, "client_id": -75001, "lifecycle": -75002, "impl_id": -75003, "boot_seed": -75004,
      "hw_version": -75005, "sw": -75006, "no_sw": -75007, "nonce": -75008, "ueid": -75009, "vsi": -75010}
ALG, KID = 1, 4
ES256, ES384 = -7, -35


def _key(label: str, curve: ec.EllipticCurve) -> ec.EllipticCurvePrivateKey:
    order_bytes = 48 if isinstance(curve, ec.SECP384R1) else 32
    scalar = int.from_bytes(hashlib.sha512(label.encode()).digest()[:order_bytes], "big") >> 8
    return ec.derive_private_key(scalar, curve)


IAK = _key("psa vector IAK P-256", ec.SECP256R1())
IAK_384 = _key("psa vector IAK P-384", ec.SECP384R1())
OTHER = _key("psa vector other key", ec.SECP256R1())
SEQ32 = bytes(range(32))
INSTANCE_ID = b"\x01" + bytes(range(0xA0, 0xC0))


def _hash(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _component(kind: str, version: str) -> dict[int, object]:
    return {1: kind, 2: _hash(f"image/{kind}/{version}"), 4: version, 5: _hash(f"signer/{kind}")}


def full_claims() -> dict[int, Any]:
    """The RFC 9783 appendix layout: four components (BL, PRoT, ARoT, App), every optional claim."""
    return {
        PROFILE_KEY: PROFILE,
        CLIENT_ID: 1,
        LIFECYCLE: 0x3000,
        IMPL_ID: bytes(range(0x40, 0x60)),
        BOOT_SEED: bytes(range(0x80, 0xA0)),
        CERT_REF: "1234567890123-12345",
        SW_COMPONENTS: [_component("BL", "3.4.2"), _component("PRoT", "1.1"), _component("ARoT", "1.0"),
                        _component("App", "2.2")],
        NONCE: SEQ32,
        UEID: INSTANCE_ID,
        VSI: "https://veraison.example/.well-known/veraison/verification",
    }


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    algorithm = hashes.SHA384() if key.curve.key_size == 384 else hashes.SHA256()
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(algorithm, deterministic_signing=True)))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def sign(payload: bytes, key: ec.EllipticCurvePrivateKey, protected: dict[int, object] | None = None,
         unprotected: dict[int, object] | None = None, *, tagged: bool = True) -> bytes:
    header = {ALG: ES384 if key.curve.key_size == 384 else ES256} if protected is None else protected
    protected_bytes = cbor2.dumps(header) if header else b""
    to_be_signed = cbor2.dumps(["Signature1", protected_bytes, b"", payload])
    body = [protected_bytes, unprotected or {}, payload, _raw_signature(key, to_be_signed)]
    return cbor2.dumps(cbor2.CBORTag(18, body) if tagged else body)


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _with(**changes: object) -> dict[int, Any]:
    names = {"nonce": NONCE, "ueid": UEID, "profile": PROFILE_KEY, "client_id": CLIENT_ID, "lifecycle": LIFECYCLE,
             "impl_id": IMPL_ID, "boot_seed": BOOT_SEED, "cert_ref": CERT_REF, "sw": SW_COMPONENTS, "vsi": VSI}
    claims = full_claims()
    for name, value in changes.items():
        if value is None:
            claims.pop(names[name])
        else:
            claims[names[name]] = value
    return claims


def _duplicate_key_payload() -> bytes:
    claims = full_claims()
    body = b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in claims.items())
    body += cbor2.dumps(LIFECYCLE) + cbor2.dumps(0x4000)
    return bytes([0xA0 + len(claims) + 1]) + body


def _tampered() -> bytes:
    good = sign(cbor2.dumps(full_claims()), IAK)
    return good.replace(b"1234567890123-12345", b"1234567890123-54321")


def _der_signature() -> bytes:
    payload = cbor2.dumps(full_claims())
    protected_bytes = cbor2.dumps({ALG: ES256})
    der = IAK.sign(cbor2.dumps(["Signature1", protected_bytes, b"", payload]),
                   ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    return cbor2.dumps(cbor2.CBORTag(18, [protected_bytes, {}, payload, der]))


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


# The published structure and values of TF-M's iat-verifier sample token for profile
# http://arm.com/psa/2.0.0 (tf-m-tools, iat-verifier/tests/data/psa-2_0_0_token.yaml), public test data;
# signed here with this folder's own key, since the sample's signing key is not used.
TFM_SAMPLE_INSTANCE_ID = _b64("AfpYdV9lhifOVGDym3UpZxMkjK562eKYS5AoDvy8tQJI")


def tfm_sample_p2() -> dict[int, Any]:
    return {
        PROFILE_KEY: "http://arm.com/psa/2.0.0",
        CLIENT_ID: 3002,
        LIFECYCLE: 0x3000,  # SL_SECURED
        IMPL_ID: _b64("qqqqqqqqqqq7u7u7u7u7u8zMzMzMzMzM3d3d3d3d3d0="),
        LEGACY_BOOT_SEED: _b64("oKGio6SlpqeoqaqrrK2ur7CxsrO0tba3uLm6u7y9vr8="),
        CERT_REF: "0604565272829-10010",
        SW_COMPONENTS: [
            {1: "SPE", 2: _b64("4z6h4ALS/nlNGhZ521i7aiOo9lm7d/icRYzs+dWZX/0="), 4: "1.6.0",
             5: _b64("v+bYb4gm9P+X+5bE5vvEmT5GGfxWXaJq3zTDKUia3Dg="), 6: "sha-256"},
            {1: "NSPE", 2: _b64("CH0Txo8yqq+4xPwKIlNEVDIAl2XiFvuFw5jJWAUiwb8="), 4: "0.0.0",
             5: _b64("s2DK9cmMa5QqSIL6nUgj77Fmqe9qbkqjfBkZ7R/MwEk="), 6: "sha-256"},
        ],
        NONCE: bytes(64),
        UEID: TFM_SAMPLE_INSTANCE_ID,
        VSI: "www.trustedfirmware.org",
    }


def tfm_sample_p1(**changes: object) -> dict[int, Any]:
    """The same token as PSA_IOT_PROFILE_1 writes it (claim keys -75000.., RFC 9783 appendix A)."""
    p2 = tfm_sample_p2()
    claims: dict[int, Any] = {
        P1["profile"]: "PSA_IOT_PROFILE_1", P1["client_id"]: p2[CLIENT_ID], P1["lifecycle"]: p2[LIFECYCLE],
        P1["impl_id"]: p2[IMPL_ID], P1["boot_seed"]: p2[LEGACY_BOOT_SEED], P1["hw_version"]: "0604565272829",
        P1["sw"]: p2[SW_COMPONENTS], P1["nonce"]: bytes(32), P1["ueid"]: p2[UEID], P1["vsi"]: p2[VSI],
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(P1[name])
        else:
            claims[P1[name]] = value
    return claims


ENROLLED = {name: TFM_SAMPLE_INSTANCE_ID for name in (
    "valid-profile-psa-2.0.0", "valid-profile-psa-iot-1", "invalid-profile-psa-iot-1-no-measurements",
    "valid-profile-psa-2.0.0-bootseed-268-ignored")}

Case = tuple[str, str, Callable[[], bytes], str, str]
_BAD_SW = [{1: "BL", 2: _hash("image/BL/3.4.2"), 4: "3.4.2"}]


def cases() -> list[Case]:
    """(name, description, token builder, expected, reason)."""
    p = cbor2.dumps
    return [
        ("valid-es256-full", "every RFC 9783 claim, protected header {1: -7} and no kid",
         lambda: sign(p(full_claims()), IAK), "valid", ""),
        ("valid-kid-instance-id", "protected kid holds the instance id",
         lambda: sign(p(full_claims()), IAK, {ALG: ES256, KID: INSTANCE_ID}), "valid", ""),
        ("valid-mandatory-only", "no boot seed, certification reference or verification service; "
         "components with measurement value and signer id only",
         lambda: sign(p(_with(boot_seed=None, cert_ref=None, vsi=None,
                              sw=[{2: _hash("image/BL/3.4.2"), 5: _hash("signer/BL")}])), IAK), "valid", ""),
        ("valid-es384-nonce-48", "ES384 signature (P-384 key), 48-byte nonce",
         lambda: sign(p(_with(nonce=bytes(range(48)))), IAK_384), "valid", ""),
        ("valid-nonce-64", "64-byte nonce, 8-byte boot seed, negative client id",
         lambda: sign(p(_with(nonce=bytes(range(64)), boot_seed=bytes(8), client_id=-1)), IAK), "valid", ""),
        ("invalid-nonce-20", "nonce of 20 bytes (psa-hash-type is 32, 48 or 64)",
         lambda: sign(p(_with(nonce=bytes(20))), IAK), "invalid", "bad-claim"),
        ("invalid-nonce-array", "nonce as an EAT array of nonces (PSA allows one bstr)",
         lambda: sign(p(_with(nonce=[SEQ32])), IAK), "invalid", "bad-claim"),
        ("invalid-instance-id-type", "instance id starting 0x02 (IEEE EUI) instead of 0x01 (RAND)",
         lambda: sign(p(_with(ueid=b"\x02" + INSTANCE_ID[1:])), IAK), "invalid", "bad-claim"),
        ("invalid-instance-id-size", "instance id of 17 bytes",
         lambda: sign(p(_with(ueid=INSTANCE_ID[:17])), IAK), "invalid", "bad-claim"),
        ("invalid-missing-lifecycle", "no security lifecycle claim",
         lambda: sign(p(_with(lifecycle=None)), IAK), "invalid", "missing-claim"),
        ("invalid-lifecycle-value", "security lifecycle 0x7000 is no PSA state",
         lambda: sign(p(_with(lifecycle=0x7000)), IAK), "invalid", "bad-claim"),
        ("invalid-lifecycle-debug", "well-formed, but lifecycle 0x5000 (recoverable PSA RoT debug) is not secured",
         lambda: sign(p(_with(lifecycle=0x5000)), IAK), "invalid", "lifecycle-not-secured"),
        ("invalid-implementation-id-size", "implementation id of 31 bytes",
         lambda: sign(p(_with(impl_id=bytes(31))), IAK), "invalid", "bad-claim"),
        ("invalid-boot-seed-size", "boot seed (268) of 7 bytes (8..32)",
         lambda: sign(p(_with(boot_seed=bytes(7))), IAK), "invalid", "bad-claim"),
        ("invalid-boot-seed-64", "boot seed (268) of 64 bytes (8..32)",
         lambda: sign(p(_with(boot_seed=bytes(64))), IAK), "invalid", "bad-claim"),
        ("valid-legacy-boot-seed-ignored", "key 2397 (an older profile's boot seed) holding 64 bytes: unknown in "
         "psa#tfm, so ignored",
         lambda: sign(p({**_with(boot_seed=None), LEGACY_BOOT_SEED: bytes(64)}), IAK), "valid", ""),
        ("invalid-client-id-zero", "client id 0 (RFC 9783 permits -2**31..-1 and 1..2**31-1)",
         lambda: sign(p(_with(client_id=0)), IAK), "invalid", "bad-claim"),
        ("valid-profile-psa-2.0.0", "profile http://arm.com/psa/2.0.0 with the structure and values of TF-M's "
         "iat-verifier sample psa-2_0_0_token.yaml (boot seed under 2397, EAN-13+5 reference, 64-byte nonce)",
         lambda: sign(p(tfm_sample_p2()), IAK), "valid", ""),
        ("valid-profile-psa-2.0.0-bootseed-268-ignored", "profile http://arm.com/psa/2.0.0 carrying a 64-byte "
         "268, a key that profile does not define: ignored",
         lambda: sign(p({**tfm_sample_p2(), BOOT_SEED: bytes(64)}), IAK), "valid", ""),
        ("valid-profile-psa-iot-1", "PSA_IOT_PROFILE_1 (claims -75000..-75010): the same sample token under the "
         "profile 1 keys, EAN-13 hardware version",
         lambda: sign(p(tfm_sample_p1()), IAK), "valid", ""),
        ("invalid-profile-psa-iot-1-no-measurements", "PSA_IOT_PROFILE_1 asserting no software measurements "
         "(-75007) instead of components: nothing to appraise",
         lambda: sign(p(tfm_sample_p1(sw=None, no_sw=1)), IAK), "invalid", "bad-claim"),
        ("invalid-certification-reference", "certification reference EAN-13 without the +5 part",
         lambda: sign(p(_with(cert_ref="1234567890123")), IAK), "invalid", "bad-claim"),
        ("invalid-client-id-type", "client id as a text string",
         lambda: sign(p(_with(client_id="1")), IAK), "invalid", "bad-claim"),
        ("invalid-missing-software-components", "no software components claim",
         lambda: sign(p(_with(sw=None)), IAK), "invalid", "missing-claim"),
        ("invalid-empty-software-components", "software components is an empty array",
         lambda: sign(p(_with(sw=[])), IAK), "invalid", "bad-claim"),
        ("invalid-component-no-signer", "a software component without its signer id",
         lambda: sign(p(_with(sw=_BAD_SW)), IAK), "invalid", "missing-claim"),
        ("invalid-component-measurement-size", "a measurement value of 20 bytes",
         lambda: sign(p(_with(sw=[{2: bytes(20), 5: _hash("signer/BL")}])), IAK), "invalid", "bad-claim"),
        ("invalid-profile", "PSA_IOT_PROFILE_1 given as eat_profile (265); that profile names itself in -75000",
         lambda: sign(p(_with(profile="PSA_IOT_PROFILE_1")), IAK), "invalid", "wrong-profile"),
        ("invalid-alg-unprotected", "alg only in the unprotected header",
         lambda: sign(p(full_claims()), IAK, {}, {ALG: ES256}), "invalid", "alg-unprotected"),
        ("invalid-alg-missing", "protected header without alg",
         lambda: sign(p(full_claims()), IAK, {KID: INSTANCE_ID}), "invalid", "alg-missing"),
        ("invalid-alg-key-mismatch", "ES384 named for a P-256 key",
         lambda: sign(p(full_claims()), IAK, {ALG: ES384}), "invalid", "alg-key-mismatch"),
        ("invalid-kid-other", "protected kid that is not the instance id",
         lambda: sign(p(full_claims()), IAK, {ALG: ES256, KID: b"someone-else"}), "invalid", "kid-mismatch"),
        ("invalid-trailing-bytes", "a valid token followed by one more byte",
         lambda: sign(p(full_claims()), IAK) + b"\x00", "invalid", "trailing-bytes"),
        ("invalid-untagged", "COSE_Sign1 array without tag 18",
         lambda: sign(p(full_claims()), IAK, tagged=False), "invalid", "not-cose-sign1"),
        ("invalid-wrong-key", "signed by a key other than the enrolled one",
         lambda: sign(p(full_claims()), OTHER), "invalid", "bad-signature"),
        ("invalid-tampered-payload", "certification reference changed after signing",
         _tampered, "invalid", "bad-signature"),
        ("invalid-der-signature", "ECDSA signature DER-encoded instead of raw r || s",
         _der_signature, "invalid", "bad-signature"),
        ("invalid-duplicate-claim", "the lifecycle key twice in the claims map",
         lambda: sign(_duplicate_key_payload(), IAK), "invalid", "malformed-cbor"),
    ]


def _diag(value: object) -> str:
    if isinstance(value, bytes):
        return f"h'{value.hex()}'"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_diag(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_diag(k)}: {_diag(v)}" for k, v in value.items()) + "}"
    return str(value)


def main() -> None:
    for old in HERE.glob("*.json"):
        old.unlink()
    for name, description, build, expected, reason in cases():
        raw = build()
        key = IAK_384 if "es384" in name else IAK
        try:
            item = cbor2.loads(raw)
            body = item.value if isinstance(item, cbor2.CBORTag) else item
            diag = _diag(cbor2.loads(body[2]))
        except (cbor2.CBORDecodeError, ValueError, TypeError, IndexError):
            diag = ""
        vector = {"description": description, "cose_hex": raw.hex(), "public_key_pem": _pem(key),
                  "enrolled_instance_id_hex": ENROLLED.get(name, INSTANCE_ID).hex(), "expected": expected,
                  "reason": reason,
                  "claims_diag": diag}
        (HERE / f"{name}.json").write_text(json.dumps(vector, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
