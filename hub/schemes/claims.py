"""Typed readers for decoded CBOR claim maps: each raises EvidenceError naming the claim."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

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


def uint(claims: Mapping[object, object], key: int, name: str, maximum: int = 2**63 - 1) -> int:
    value = require(claims, key, int, name)
    if not 0 <= value <= maximum:
        raise EvidenceError("bad-claim", f"{name} out of range", authenticated=True)
    return value


def text_list(value: object, name: str, limit: int = 256) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > limit:
        raise EvidenceError("bad-claim", f"{name} must be an array of at most {limit} strings", authenticated=True)
    return tuple(typed(item, str, name) for item in value)
