"""Strict CBOR decoding for untrusted input.

cbor2's defaults are generous: trailing bytes are ignored, indefinite lengths
and duplicate map keys are accepted, and built-in tags build bignums, regular
expressions and shared (possibly cyclic) references. Evidence comes from
devices that may be hostile, so this module decodes with every one of those
turned off: definite lengths only, no duplicate keys, a small nesting depth,
a size cap, no trailing bytes, and no tag at all except the ones a caller
allows (COSE_Sign1's tag 18 at the top).
"""

from __future__ import annotations

import io
from collections.abc import Collection, Iterable, Mapping
from typing import cast

import cbor2

DEFAULT_MAX_BYTES = 64 * 1024
DEFAULT_MAX_DEPTH = 16

# Tags cbor2 decodes into Python objects by itself (probed on cbor2 6.3):
# datetimes, bignums, decimals, rationals, regular expressions, MIME, UUIDs,
# sets, shared references, string references, IP addresses, self-describe.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004, 55799)


class CborError(ValueError):
    """Input is not acceptable CBOR; ``reason`` names the rule it broke."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _reject_builtin(*_args: object) -> object:
    raise cbor2.CBORDecodeError("tag not allowed here")


_REJECT_BUILTINS = {tag: _reject_builtin for tag in _BUILTIN_TAGS}


_PLAIN_KEY_TYPES = frozenset({int, str, bytes})
_FROZEN = cbor2.frozendict


def _check_keys(mapping: object, _immutable: bool) -> object:
    """Map keys must be integers, text or bytes: ``true == 1`` and ``10.0 == 10`` in Python, so a
    boolean or float key could otherwise stand in for an integer label."""
    kind = type(mapping)  # dict, or cbor2's frozendict inside an allowed tag: neither needs the ABC check
    keys: Iterable[object] = (cast("Mapping[object, object]", mapping)
                              if kind is dict or kind is _FROZEN or isinstance(mapping, Mapping) else ())
    for key in keys:
        if type(key) in _PLAIN_KEY_TYPES:  # the usual case, decided without the general checks below
            continue
        if isinstance(key, bool) or not isinstance(key, (int, str, bytes)):
            raise cbor2.CBORDecodeError(f"map key of type {type(key).__name__} is not allowed")
    return mapping


def _no_tags(tag: cbor2.CBORTag, _immutable: bool) -> object:
    raise cbor2.CBORDecodeError(f"unknown tag {tag.tag}")


def loads_strict(
    data: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    allowed_tags: Collection[int] = (),
) -> object:
    """Decode exactly one CBOR item from ``data`` under the strict rules.

    Tags in ``allowed_tags`` come back as ``cbor2.CBORTag`` (contents
    immutable: tuples and frozendicts); any other tag is an error.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CborError("not-bytes", type(data).__name__)
    if len(data) > max_bytes:
        raise CborError("too-large", f"{len(data)} bytes > limit {max_bytes}")
    if not data:
        raise CborError("empty", "no CBOR item")

    def tag_hook(tag: cbor2.CBORTag, _immutable: bool) -> object:
        if tag.tag in allowed_tags:
            return tag
        raise cbor2.CBORDecodeError(f"unknown tag {tag.tag}")

    stream = io.BytesIO(data if type(data) is bytes else bytes(data))
    decoder = cbor2.CBORDecoder(
        stream,
        tag_hook=tag_hook if allowed_tags else _no_tags,
        object_hook=_check_keys,
        semantic_decoders=_REJECT_BUILTINS,
        max_depth=max_depth,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=False,
    )
    try:
        value = decoder.decode()
    except RecursionError as exc:  # depth guard of last resort
        raise CborError("too-deep", "nesting exceeds the limit") from exc
    except (cbor2.CBORDecodeError, ValueError, OverflowError, MemoryError) as exc:
        raise CborError("malformed-cbor", _describe(exc)) from exc
    if stream.tell() != len(data):
        raise CborError("trailing-bytes", f"{len(data) - stream.tell()} bytes after the item")
    return value


def _describe(exc: BaseException) -> str:
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return text[:200]
