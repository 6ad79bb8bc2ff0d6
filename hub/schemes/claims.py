"""Typed readers for decoded CBOR claim maps: each raises EvidenceError naming the claim."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from hub import wire
from hub.schemes.base import EvidenceError

_T = TypeVar("_T")


def require(claims: Mapping[object, object], key: int, kind: type[_T], name: str) -> _T:
    if key not in claims:
        raise EvidenceError("missing-claim", f"{name} ({key}) is required", authenticated=True)
    return typed(claims[key], kind, name)


def optional(claims: Mapping[object, object], key: int, kind: type[_T], name: str) -> _T | None:
    if key not in claims:
        return None
    return typed(claims[key], kind, name)


def typed(value: object, kind: type[_T], name: str) -> _T:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise EvidenceError("bad-claim", f"{name} must be an integer", authenticated=True)
    if not isinstance(value, kind):
        raise EvidenceError("bad-claim", f"{name} must be {kind.__name__}", authenticated=True)
    return value


def eat_nonce(value: object, name: str = "nonce") -> bytes:
    """An ``eat_nonce`` (RFC 9711 §4.1): a byte string of 8..64 bytes (``wire.NONCE_MIN_SIZE``..``MAX``).

    The array form is not accepted: every profile of this hub carries exactly one nonce. Raises
    EvidenceError("bad-nonce") naming the size, so an out-of-range value is never echoed in a result."""
    nonce = typed(value, bytes, name)
    if not wire.NONCE_MIN_SIZE <= len(nonce) <= wire.NONCE_MAX_SIZE:
        raise EvidenceError("bad-nonce", f"{name} must be {wire.NONCE_MIN_SIZE}..{wire.NONCE_MAX_SIZE} bytes "
                            f"(RFC 9711 4.1), got {len(nonce)}", authenticated=True)
    return nonce


def require_nonce(claims: Mapping[object, object], key: int = 10, name: str = "nonce") -> bytes:
    """The required ``eat_nonce`` claim (key 10), checked by ``eat_nonce``."""
    if key not in claims:
        raise EvidenceError("missing-claim", f"{name} ({key}) is required", authenticated=True)
    return eat_nonce(claims[key], name)


def uint(claims: Mapping[object, object], key: int, name: str, maximum: int = 2**63 - 1) -> int:
    value = require(claims, key, int, name)
    if not 0 <= value <= maximum:
        raise EvidenceError("bad-claim", f"{name} out of range", authenticated=True)
    return value


def text_list(value: object, name: str, limit: int = 256) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > limit:
        raise EvidenceError("bad-claim", f"{name} must be an array of at most {limit} strings", authenticated=True)
    return tuple(typed(item, str, name) for item in value)
