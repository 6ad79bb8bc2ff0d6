"""The simulator's own COSE_Sign1 (RFC 9052): a small encoder and a strict verifier.

Deliberately independent of ``hub``: it is built from ``cbor2`` and ``cryptography``
only, so a bug in the hub's decoder cannot hide a bug in this encoder (and the
other way round).

* ``sign1`` produces ``18([protected bstr, {}, payload bstr, signature bstr])`` with
  the protected header ``{1: alg, 4: kid}`` and a raw ``r || s`` ECDSA signature over
  ``Sig_structure = ["Signature1", protected, b"", payload]``.
* ``verify_sign1`` checks messages the hub sends to devices (epochs and commands):
  tag 18, exactly four elements, ``alg`` in the protected header and suited to the
  key, no ``crit``, no trailing bytes, signature over the protected bytes as received.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from hub import wire

VerifyKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

MAX_MESSAGE_BYTES = 64 * 1024
_MAX_DEPTH = 8
# cbor2's built-in semantic tags (dates, bignums, regex, shared references, ...): none is
# used by this protocol, and some are dangerous on hostile input (35 compiles a regex).
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 100, 256, 258, 260, 261, 262, 263, 1004, 55799)


class CoseError(ValueError):
    """A COSE message is malformed (``reason`` "malformed") or not authentic ("forged")."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Sign1Parts:
    """A decoded COSE_Sign1 whose header rules hold (the signature may not be checked yet)."""

    protected_bytes: bytes
    alg: int
    kid: bytes | None
    payload: bytes
    signature: bytes


def _hash_for(alg: int) -> hashes.HashAlgorithm:
    if alg == wire.ALG_ES256:
        return hashes.SHA256()
    if alg == wire.ALG_ES384:
        return hashes.SHA384()
    if alg == wire.ALG_ES512:
        return hashes.SHA512()
    raise CoseError("malformed", f"unsupported ECDSA algorithm {alg}")


def _ec_alg(curve: ec.EllipticCurve) -> int:
    algs = {"secp256r1": wire.ALG_ES256, "secp384r1": wire.ALG_ES384, "secp521r1": wire.ALG_ES512}
    if curve.name not in algs:
        raise CoseError("malformed", f"unsupported curve {curve.name}")
    return algs[curve.name]


def sig_structure(protected_bytes: bytes, payload: bytes) -> bytes:
    """``Sig_structure`` for COSE_Sign1 with empty external AAD (RFC 9052 section 4.4)."""
    return cbor2.dumps(["Signature1", protected_bytes, b"", payload])


def encode_protected(alg: int, kid: bytes) -> bytes:
    return cbor2.dumps({wire.HDR_ALG: alg, wire.HDR_KID: kid})


def sign1(payload: bytes, key: ec.EllipticCurvePrivateKey, kid: bytes) -> bytes:
    """A tagged COSE_Sign1 over ``payload``, ECDSA with the hash of the key's curve."""
    alg = _ec_alg(key.curve)
    protected_bytes = encode_protected(alg, kid)
    der = key.sign(sig_structure(protected_bytes, payload), ec.ECDSA(_hash_for(alg)))
    r, s = decode_dss_signature(der)
    size = (key.curve.key_size + 7) // 8
    signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return cbor2.dumps(cbor2.CBORTag(wire.COSE_SIGN1_TAG, [protected_bytes, {}, payload, signature]))


def _refuse_semantic_tag(decoder: cbor2.CBORDecoder, immutable: bool) -> object:
    raise cbor2.CBORDecodeError("semantic tag not allowed")


def _only_cose_sign1(tag: cbor2.CBORTag, immutable: bool) -> object:
    if tag.tag != wire.COSE_SIGN1_TAG:
        raise cbor2.CBORDecodeError(f"tag {tag.tag} not allowed")
    return tag


def loads_exact(data: bytes) -> object:
    """Decode one CBOR item strictly.

    No indefinite lengths, no duplicate keys, no trailing bytes, no tag but 18.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise CoseError("malformed", f"message of {len(data)} bytes is too large")
    stream = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            stream,
            tag_hook=_only_cose_sign1,
            semantic_decoders={tag: _refuse_semantic_tag for tag in _BUILTIN_TAGS},
            max_depth=_MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
        item: object = decoder.decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise CoseError("malformed", f"not valid CBOR: {exc}") from exc
    if stream.tell() != len(data):
        raise CoseError("malformed", f"{len(data) - stream.tell()} trailing bytes")
    return item


def decode_sign1(raw: bytes) -> Sign1Parts:
    """Parse a tagged COSE_Sign1 and enforce the header rules; the signature is not checked."""
    item = loads_exact(raw)
    if not isinstance(item, cbor2.CBORTag) or item.tag != wire.COSE_SIGN1_TAG:
        raise CoseError("malformed", "not a tag-18 COSE_Sign1")
    body = item.value
    if not isinstance(body, (list, tuple)) or len(body) != 4:
        raise CoseError("malformed", "COSE_Sign1 must be an array of four elements")
    protected_bytes, unprotected, payload, signature = body
    if not isinstance(protected_bytes, bytes) or not isinstance(unprotected, Mapping):
        raise CoseError("malformed", "bad header buckets")
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise CoseError("malformed", "payload and signature must be byte strings")
    protected = loads_exact(protected_bytes) if protected_bytes else {}
    if not isinstance(protected, Mapping):
        raise CoseError("malformed", "protected header is not a map")
    if wire.HDR_ALG not in protected or wire.HDR_ALG in unprotected:
        raise CoseError("forged", "alg must be in the protected header (and only there)")
    if wire.HDR_CRIT in protected or wire.HDR_CRIT in unprotected:
        raise CoseError("malformed", "critical headers are not understood")
    alg = protected[wire.HDR_ALG]
    if not isinstance(alg, int) or isinstance(alg, bool):
        raise CoseError("malformed", "alg must be an integer")
    kid = protected.get(wire.HDR_KID)
    if kid is not None and not isinstance(kid, bytes):
        raise CoseError("malformed", "kid must be a byte string")
    return Sign1Parts(protected_bytes, alg, kid, payload, signature)


def verify_sign1(raw: bytes, key: VerifyKey) -> Sign1Parts:
    """Decode and verify ``raw`` with ``key``; raise CoseError("forged") if it does not verify."""
    parts = decode_sign1(raw)
    to_be_signed = sig_structure(parts.protected_bytes, parts.payload)
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            if parts.alg not in (wire.ALG_EDDSA, wire.ALG_ED25519):
                raise CoseError("forged", f"algorithm {parts.alg} does not suit an Ed25519 key")
            key.verify(parts.signature, to_be_signed)
            return parts
        if parts.alg != _ec_alg(key.curve):
            raise CoseError("forged", f"algorithm {parts.alg} does not suit a {key.curve.name} key")
        size = (key.curve.key_size + 7) // 8
        if len(parts.signature) != 2 * size:
            raise CoseError("forged", f"signature must be {2 * size} bytes (r || s)")
        r = int.from_bytes(parts.signature[:size], "big")
        s = int.from_bytes(parts.signature[size:], "big")
        key.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(_hash_for(parts.alg)))
    except InvalidSignature as exc:
        raise CoseError("forged", "signature does not verify with the hub key") from exc
    return parts
