"""COSE_Sign1 (RFC 9052) decoding, verification and signing.

Verification runs on ``cryptography`` directly: pycose 1.1 verifies ES256
about 28 times slower (its EC2 path is pure Python), cannot decode tagged
messages under cbor2 6, and takes ``alg`` from the unprotected header. The
rules here are RFC 9052's, applied strictly:

* the message is tag 18 wrapping exactly ``[bstr, map, bstr, bstr]``;
* ``alg`` must be in the protected header and must suit the verifying key;
* no label may appear in both header buckets; ``crit`` is refused (this
  profile defines no critical extensions);
* the signature is checked over the protected bytes *as received*;
* ECDSA signatures are raw ``r || s`` of exactly twice the curve size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from hub import wire
from hub.crypto.cbor_strict import DEFAULT_MAX_BYTES, CborError, loads_strict
from hub.crypto.keys import PrivateKey, PublicKey, allowed_algorithms, signing_algorithm

_HASH_FOR_ALG: dict[int, type[hashes.HashAlgorithm]] = {
    wire.ALG_ES256: hashes.SHA256,
    wire.ALG_ESP256: hashes.SHA256,
    wire.ALG_ES384: hashes.SHA384,
    wire.ALG_ES512: hashes.SHA512,
}
_CWT_TAG_HEAD = bytes((0xD8, wire.CWT_TAG))
_KNOWN_ALGS = frozenset(_HASH_FOR_ALG) | {wire.ALG_EDDSA, wire.ALG_ED25519}


class CoseError(ValueError):
    """A COSE structure is malformed or does not verify; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Sign1:
    protected_bytes: bytes
    protected: Mapping[object, object]
    unprotected: Mapping[object, object]
    payload: bytes
    signature: bytes

    @property
    def alg(self) -> int:
        alg = self.protected[wire.HDR_ALG]
        assert isinstance(alg, int)
        return alg

    @property
    def kid(self) -> bytes | None:
        kid = self.protected.get(wire.HDR_KID)
        return kid if isinstance(kid, bytes) else None

    def to_be_signed(self, external_aad: bytes = b"") -> bytes:
        return sig_structure(self.protected_bytes, self.payload, external_aad)


def sig_structure(protected_bytes: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    return cbor2.dumps(["Signature1", protected_bytes, external_aad, payload])


def decode_sign1(raw: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Sign1:
    """Parse a tagged COSE_Sign1 and check its header rules; the signature is not checked yet.

    The COSE_Sign1 may be wrapped in the CWT tag 61 (RFC 8392 §6, which RFC 9711 §7.1 allows for an
    EAT): ``61(18([...]))``, the tag in its preferred encoding ``d8 3d``. The CWT tag around anything but
    tag 18 is ``not-cose-sign1`` with a detail naming tag 61. Raises CoseError."""
    body = raw[len(_CWT_TAG_HEAD):] if raw[:len(_CWT_TAG_HEAD)] == _CWT_TAG_HEAD else raw
    try:
        item = loads_strict(body, max_bytes=max_bytes, max_depth=4, allowed_tags=(wire.COSE_SIGN1_TAG,))
    except CborError as exc:
        raise CoseError(exc.reason, exc.detail) from exc
    if body is not raw and not (isinstance(item, cbor2.CBORTag) and item.tag == wire.COSE_SIGN1_TAG):
        raise CoseError("not-cose-sign1", "CWT tag 61 must wrap a tag-18 COSE_Sign1")
    if not isinstance(item, cbor2.CBORTag) or item.tag != wire.COSE_SIGN1_TAG:
        raise CoseError("not-cose-sign1", "expected CBOR tag 18 (COSE_Sign1)")
    body = item.value
    if not isinstance(body, (tuple, list)) or len(body) != 4:
        raise CoseError("not-cose-sign1", "COSE_Sign1 must be an array of 4")
    protected_bytes, unprotected, payload, signature = body
    if not isinstance(protected_bytes, bytes):
        raise CoseError("bad-header", "protected header must be a byte string")
    if not isinstance(unprotected, Mapping):
        raise CoseError("bad-header", "unprotected header must be a map")
    if payload is None:
        raise CoseError("detached-payload", "detached payloads are not accepted")
    if not isinstance(payload, bytes):
        raise CoseError("bad-payload", "payload must be a byte string")
    if not isinstance(signature, bytes):
        raise CoseError("bad-signature", "signature must be a byte string")
    protected = _decode_protected(protected_bytes)
    _check_headers(protected, unprotected)
    return Sign1(protected_bytes, protected, unprotected, payload, signature)


def _decode_protected(protected_bytes: bytes) -> Mapping[object, object]:
    if protected_bytes == b"":
        return {}
    try:
        header = loads_strict(protected_bytes, max_bytes=8192, max_depth=4)
    except CborError as exc:
        raise CoseError("bad-header", f"protected header: {exc}") from exc
    if not isinstance(header, Mapping):
        raise CoseError("bad-header", "protected header must encode a map")
    return header


def _check_headers(protected: Mapping[object, object], unprotected: Mapping[object, object]) -> None:
    if wire.HDR_ALG in unprotected:
        raise CoseError("alg-unprotected", "alg must be in the protected header only")
    if wire.HDR_ALG not in protected:
        raise CoseError("alg-missing", "no alg in the protected header")
    alg = protected[wire.HDR_ALG]
    if not isinstance(alg, int) or isinstance(alg, bool) or alg not in _KNOWN_ALGS:
        raise CoseError("alg-unsupported", f"algorithm {alg!r} is not accepted")
    if wire.HDR_CRIT in protected or wire.HDR_CRIT in unprotected:
        raise CoseError("crit-unknown", "critical header parameters are not understood")
    if wire.HDR_X5CHAIN in unprotected:
        raise CoseError("x5chain-unprotected", "x5chain must be in the protected header")
    both = set(protected) & set(unprotected)
    if both:
        raise CoseError("header-duplicate", f"labels in both header buckets: {sorted(map(str, both))}")
    kid = protected.get(wire.HDR_KID)
    if kid is not None and not isinstance(kid, bytes):
        raise CoseError("bad-header", "kid must be a byte string")


def verify_sign1(message: Sign1, key: PublicKey, external_aad: bytes = b"") -> None:
    """Check the signature with ``key``; raise CoseError if it does not verify."""
    alg = message.alg
    if alg not in allowed_algorithms(key):
        raise CoseError("alg-key-mismatch", f"algorithm {alg} is not allowed for this key")
    to_be_signed = message.to_be_signed(external_aad)
    signature = message.signature
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            if len(signature) != 64:
                raise CoseError("bad-signature", "Ed25519 signature must be 64 bytes")
            key.verify(signature, to_be_signed)
            return
        size = (key.curve.key_size + 7) // 8
        if len(signature) != 2 * size:
            raise CoseError("bad-signature", f"ECDSA signature must be {2 * size} bytes (r || s)")
        r = int.from_bytes(signature[:size], "big")
        s = int.from_bytes(signature[size:], "big")
        key.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(_HASH_FOR_ALG[alg]()))
    except InvalidSignature as exc:
        raise CoseError("bad-signature", "signature does not verify") from exc


class Signer:
    """``sign1`` for one key and one protected header, prepared once: the header is encoded and the
    algorithm objects are made at construction, so signing costs the signature and two small encodings.
    The output is byte-for-byte what ``sign1`` makes with the same arguments."""

    def __init__(self, key: PrivateKey, *, kid: bytes | None = None, content_type: str | None = None) -> None:
        self.key = key
        alg = signing_algorithm(key)
        header: dict[int, object] = {wire.HDR_ALG: alg}
        if kid is not None:
            header[wire.HDR_KID] = kid
        if content_type is not None:
            header[wire.HDR_CONTENT_TYPE] = content_type
        self.protected_bytes = cbor2.dumps(header)
        self._ecdsa = None if isinstance(key, ed25519.Ed25519PrivateKey) else ec.ECDSA(_HASH_FOR_ALG[alg]())
        self._size = 0 if isinstance(key, ed25519.Ed25519PrivateKey) else (key.curve.key_size + 7) // 8

    def sign(self, payload: bytes) -> bytes:
        """A tagged COSE_Sign1 (RFC 9052 §4.2) over ``payload`` with empty external AAD."""
        to_be_signed = sig_structure(self.protected_bytes, payload)
        key = self.key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            signature = key.sign(to_be_signed)
        else:
            assert self._ecdsa is not None
            r, s = decode_dss_signature(key.sign(to_be_signed, self._ecdsa))
            signature = r.to_bytes(self._size, "big") + s.to_bytes(self._size, "big")
        return cbor2.dumps(cbor2.CBORTag(wire.COSE_SIGN1_TAG, [self.protected_bytes, {}, payload, signature]))


def sign1(
    payload: bytes,
    key: PrivateKey,
    *,
    kid: bytes | None = None,
    content_type: str | None = None,
    extra_protected: Mapping[int, object] | None = None,
) -> bytes:
    """The hub's own COSE_Sign1 (results, commands, manifests, epochs), tagged."""
    alg = signing_algorithm(key)
    header: dict[int, object] = {wire.HDR_ALG: alg}
    if kid is not None:
        header[wire.HDR_KID] = kid
    if content_type is not None:
        header[wire.HDR_CONTENT_TYPE] = content_type
    if extra_protected:
        header.update(extra_protected)
    protected_bytes = cbor2.dumps(header)
    to_be_signed = sig_structure(protected_bytes, payload)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(to_be_signed)
    else:
        size = (key.curve.key_size + 7) // 8
        der = key.sign(to_be_signed, ec.ECDSA(_HASH_FOR_ALG[alg]()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return cbor2.dumps(cbor2.CBORTag(wire.COSE_SIGN1_TAG, [protected_bytes, {}, payload, signature]))
