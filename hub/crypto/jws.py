"""JWS compact serialization (RFC 7515 §7.1) of a JWT claims set (RFC 7519), for JWT attestation results.

Written on ``cryptography`` directly, like ``cose``: the hub only signs (never verifies) JWTs, with its
own key, so a JOSE library would add a dependency for about twenty lines and take the algorithm choice
out of our hands. The algorithm follows the key (RFC 7518 §3.4: ES256 for P-256, ES384 for P-384,
ES512 for P-521; RFC 8037: EdDSA for Ed25519). ECDSA signatures are the raw ``R || S`` of twice the
curve size, as JWS requires (not DER), computed deterministically (RFC 6979).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from hub.crypto.keys import PrivateKey

_JOSE_ALGS: dict[str, tuple[str, type[hashes.HashAlgorithm]]] = {
    "secp256r1": ("ES256", hashes.SHA256),
    "secp384r1": ("ES384", hashes.SHA384),
    "secp521r1": ("ES512", hashes.SHA512),
}


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jose_algorithm(key: PrivateKey) -> str:
    """The JWS ``alg`` for the hub's key: ES256, ES384, ES512 or EdDSA."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    return _JOSE_ALGS[key.curve.name][0]


def sign_jws(claims: Mapping[str, object], key: PrivateKey, *, kid: str | None = None) -> str:
    """``header.payload.signature`` (base64url each); header ``{"alg", "typ": "JWT", ? "kid"}``.

    The claims are serialized as compact JSON (UTF-8, keys in the given order)."""
    header: dict[str, str] = {"alg": jose_algorithm(key), "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = (b64url(_json(header)) + "." + b64url(_json(claims))).encode("ascii")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(signing_input)
    else:
        hash_type = _JOSE_ALGS[key.curve.name][1]
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hash_type(), deterministic_signing=True)))
        size = (key.curve.key_size + 7) // 8
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return signing_input.decode("ascii") + "." + b64url(signature)


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
