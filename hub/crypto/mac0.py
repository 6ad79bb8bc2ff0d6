"""COSE_Mac0 (RFC 9052 §6.2) with HMAC 256/256 (RFC 9053 §3.1, alg 5): PSA tokens under a symmetric key.

TF-M platforms with a symmetric initial attestation key send their token as a COSE_Mac0; the PSA
profile (RFC 9783 §5) says a verifier must accept it. The rules are ``cose``'s, applied strictly:

* the message is tag 17 (optionally inside the CWT tag 61) wrapping exactly ``[bstr, map, bstr, bstr]``;
* ``alg`` must be in the protected header and be HMAC 256/256 (5): a full 32-byte HMAC-SHA256 tag;
  the truncated HMAC 256/64 (4) is refused;
* no label in both header buckets; ``crit`` is refused;
* the tag is computed over ``MAC_structure = ["MAC0", protected (as received), external_aad, payload]``
  and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

import cbor2

from hub import wire
from hub.crypto.cbor_strict import DEFAULT_MAX_BYTES, CborError, loads_strict
from hub.crypto.cose import CoseError

HMAC_KEY_SIZE = 32  # HMAC 256/256 keys are 256 bits (RFC 9053 §3.1 recommends the hash size)
_CWT_HEAD = bytes((0xD8, wire.CWT_TAG))
_MAC0_HEAD = 0xD1  # tag 17, preferred encoding


@dataclass(frozen=True, slots=True)
class Mac0:
    protected_bytes: bytes
    protected: Mapping[object, object]
    unprotected: Mapping[object, object]
    payload: bytes
    tag: bytes

    @property
    def kid(self) -> bytes | None:
        kid = self.protected.get(wire.HDR_KID)
        return kid if isinstance(kid, bytes) else None


def is_mac0(raw: bytes) -> bool:
    """Does ``raw`` start with tag 17 (COSE_Mac0), bare or inside the CWT tag 61?"""
    body = raw[len(_CWT_HEAD):] if raw[:len(_CWT_HEAD)] == _CWT_HEAD else raw
    return bool(body) and body[0] == _MAC0_HEAD


def decode_mac0(raw: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Mac0:
    """Parse a tagged COSE_Mac0 and check its header rules; the tag is not checked yet. Raises CoseError."""
    body = raw[len(_CWT_HEAD):] if raw[:len(_CWT_HEAD)] == _CWT_HEAD else raw
    try:
        item = loads_strict(body, max_bytes=max_bytes, max_depth=4, allowed_tags=(wire.COSE_MAC0_TAG,))
    except CborError as exc:
        raise CoseError(exc.reason, exc.detail) from exc
    if not isinstance(item, cbor2.CBORTag) or item.tag != wire.COSE_MAC0_TAG:
        raise CoseError("not-cose-mac0", "expected CBOR tag 17 (COSE_Mac0)")
    parts = item.value
    if not isinstance(parts, (tuple, list)) or len(parts) != 4:
        raise CoseError("not-cose-mac0", "COSE_Mac0 must be an array of 4")
    protected_bytes, unprotected, payload, tag = parts
    if not isinstance(protected_bytes, bytes) or not isinstance(unprotected, Mapping):
        raise CoseError("bad-header", "protected header must be a byte string, unprotected a map")
    if not isinstance(payload, bytes):
        raise CoseError("detached-payload" if payload is None else "bad-payload", "payload must be a byte string")
    if not isinstance(tag, bytes):
        raise CoseError("bad-mac", "tag must be a byte string")
    try:
        protected = loads_strict(protected_bytes, max_bytes=8192, max_depth=4) if protected_bytes else {}
    except CborError as exc:
        raise CoseError("bad-header", f"protected header: {exc}") from exc
    if not isinstance(protected, Mapping):
        raise CoseError("bad-header", "protected header must encode a map")
    if wire.HDR_ALG in unprotected:
        raise CoseError("alg-unprotected", "alg must be in the protected header only")
    if protected.get(wire.HDR_ALG) != wire.ALG_HMAC_256_256:
        raise CoseError("alg-unsupported", f"COSE_Mac0 alg must be HMAC 256/256 (5), got {protected.get(1)!r}")
    if wire.HDR_CRIT in protected or wire.HDR_CRIT in unprotected:
        raise CoseError("crit-unknown", "critical header parameters are not understood")
    both = set(protected) & set(unprotected)
    if both:
        raise CoseError("header-duplicate", f"labels in both header buckets: {sorted(map(str, both))}")
    return Mac0(protected_bytes, protected, unprotected, payload, tag)


def mac_structure(protected_bytes: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    return cbor2.dumps(["MAC0", protected_bytes, external_aad, payload])


def verify_mac0(message: Mac0, key: bytes, external_aad: bytes = b"") -> None:
    """Check the HMAC-SHA256 tag with ``key`` (constant-time); raise CoseError("bad-mac") if it differs."""
    expected = hmac.new(key, mac_structure(message.protected_bytes, message.payload, external_aad),
                        hashlib.sha256).digest()
    if len(message.tag) != len(expected) or not hmac.compare_digest(expected, message.tag):
        raise CoseError("bad-mac", "COSE_Mac0 tag does not verify")
