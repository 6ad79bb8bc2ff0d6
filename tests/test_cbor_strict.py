"""Strict CBOR decoding (hub.crypto.cbor_strict): every generous cbor2 default is turned off."""

from __future__ import annotations

import cbor2
import pytest

from hub.crypto.cbor_strict import DEFAULT_MAX_BYTES, CborError, loads_strict


def reason(data: object, **kw: object) -> str:
    with pytest.raises(CborError) as info:
        loads_strict(data, **kw)  # type: ignore[arg-type]
    return info.value.reason


def test_plain_values_decode() -> None:
    value = {1: [b"x", "y", -3, 1.5, None, True], -65537: {"a": 2**63}}
    assert loads_strict(cbor2.dumps(value)) == value
    assert loads_strict(bytearray(cbor2.dumps(5))) == 5  # type: ignore[arg-type]
    assert loads_strict(memoryview(cbor2.dumps(5))) == 5  # type: ignore[arg-type]


def test_size_cap() -> None:
    data = cbor2.dumps(b"x" * 100)
    assert loads_strict(data, max_bytes=len(data)) == b"x" * 100
    assert reason(data, max_bytes=len(data) - 1) == "too-large"
    assert reason(cbor2.dumps(b"x" * DEFAULT_MAX_BYTES)) == "too-large"


def test_empty_input_refused() -> None:
    assert reason(b"") == "empty"


def test_depth_limit() -> None:
    nested: object = 0
    for _ in range(5):
        nested = [nested]
    data = cbor2.dumps(nested)
    assert loads_strict(data, max_depth=6) == nested
    assert reason(data, max_depth=4) == "malformed-cbor"


def test_deep_nesting_does_not_recurse_unbounded() -> None:
    data = b"\x81" * 100_000 + b"\x00"  # 100 000 nested one-element arrays
    assert reason(data, max_bytes=200_000) == "malformed-cbor"


@pytest.mark.parametrize(
    "data",
    [
        b"\x9f\x01\x02\xff",  # indefinite array
        b"\xbf\x01\x02\xff",  # indefinite map
        b"\x5f\x41a\x41b\xff",  # indefinite byte string
        b"\x7f\x61a\x61b\xff",  # indefinite text string
    ],
    ids=["array", "map", "bytes", "text"],
)
def test_indefinite_lengths_refused(data: bytes) -> None:
    assert cbor2.loads(data) is not None  # cbor2 alone accepts it
    assert reason(data) == "malformed-cbor"


def test_duplicate_keys_refused() -> None:
    data = b"\xa2\x01\x01\x01\x02"  # {1: 1, 1: 2}
    assert cbor2.loads(data) == {1: 2}  # cbor2 alone keeps the last one
    assert reason(data) == "malformed-cbor"


def test_nested_duplicate_keys_refused() -> None:
    data = b"\x81\xa2\x61a\x01\x61a\x02"  # [{"a": 1, "a": 2}]
    assert reason(data) == "malformed-cbor"


def test_trailing_bytes_refused() -> None:
    data = cbor2.dumps({1: 2}) + b"\x00"
    assert cbor2.loads(data) == {1: 2}  # cbor2 alone ignores the rest
    assert reason(data) == "trailing-bytes"


def test_truncated_input_refused() -> None:
    assert reason(cbor2.dumps([1, 2, 3])[:-1]) == "malformed-cbor"
    assert reason(b"\x5a\xff\xff\xff\xff") == "malformed-cbor"  # claims a 4 GiB byte string


@pytest.mark.parametrize("tag", [2, 3])
def test_bignum_tags_refused(tag: int) -> None:
    data = cbor2.dumps(cbor2.CBORTag(tag, b"\x01" * 9))
    assert reason(data) == "malformed-cbor"


def test_megabyte_bignum_refused_by_size_cap_and_by_tag_rule() -> None:
    """cbor2 turns a tag-2 byte string into an int (a 1 MB one raises deep inside int()); strict decoding
    never builds it: the size cap refuses it first, and with a cap large enough the tag rule does."""
    data = b"\xc2" + cbor2.dumps(b"\xff" * (1024 * 1024))
    assert reason(data) == "too-large"
    assert reason(data, max_bytes=2 * 1024 * 1024) == "malformed-cbor"


def test_regex_tag_35_refused() -> None:
    data = cbor2.dumps(cbor2.CBORTag(35, "(a+)+$"))
    assert reason(data) == "malformed-cbor"


@pytest.mark.parametrize("data", [b"\xd8\x1c\x81\xd8\x1d\x00", b"\xd8\x1d\x00"], ids=["cyclic-28-29", "ref-29"])
def test_shared_reference_tags_refused(data: bytes) -> None:
    assert reason(data) == "malformed-cbor"


def test_set_tag_258_refused() -> None:
    assert reason(cbor2.dumps(cbor2.CBORTag(258, [1, 2]))) == "malformed-cbor"


@pytest.mark.parametrize(
    ("tag", "content"),
    [
        (0, "2026-01-01T00:00:00Z"),
        (1, 1700000000),
        (4, [-2, 12345]),
        (5, [1, 3]),
        (30, [1, 3]),
        (36, "Content-Type: text/plain\n\nx"),
        (37, b"\x00" * 16),
        (52, b"\x7f\x00\x00\x01"),
        (54, b"\x00" * 16),
        (100, 19000),
        (260, b"\x7f\x00\x00\x01"),
        (261, {1: 2}),
        (1004, "2026-01-01"),
        (55799, 5),
        (25, 0),
        (256, [1]),
    ],
)
def test_builtin_semantic_tags_refused(tag: int, content: object) -> None:
    assert reason(cbor2.dumps(cbor2.CBORTag(tag, content))) == "malformed-cbor"


@pytest.mark.parametrize("tag", [6, 18, 21, 99, 501, 1000, 2**32])
def test_unknown_tags_refused(tag: int) -> None:
    assert reason(cbor2.dumps(cbor2.CBORTag(tag, 1))) == "malformed-cbor"


def test_allowed_tag_is_returned_and_others_inside_it_refused() -> None:
    value = loads_strict(cbor2.dumps(cbor2.CBORTag(18, [1])), allowed_tags=(18,))
    assert isinstance(value, cbor2.CBORTag) and value.tag == 18
    assert reason(cbor2.dumps(cbor2.CBORTag(18, [cbor2.CBORTag(2, b"\x01")])), allowed_tags=(18,)) == "malformed-cbor"


@pytest.mark.parametrize("data", ["text", 5, None, [b"\x00"], 1.5])
def test_non_bytes_input_refused(data: object) -> None:
    assert reason(data) == "not-bytes"


@pytest.mark.parametrize(
    "data", [b"\xff", b"\x1c", b"\xf8\x00", b"\xa1\x01"], ids=["break", "reserved-ai", "simple", "short-map"]
)
def test_ill_formed_items_refused(data: bytes) -> None:
    assert reason(data) == "malformed-cbor"


@pytest.mark.parametrize(
    "data", [b"\xa1\xf5\x01", b"\xa1\xfb\x40\x24\x00\x00\x00\x00\x00\x00\x01", b"\xa1\xf6\x01", b"\xa1\x80\x01"],
    ids=["true-as-1", "float-10.0", "null", "array"],
)
def test_map_keys_must_be_int_text_or_bytes(data: bytes) -> None:
    """In Python ``True == 1`` and ``10.0 == 10``: such keys could stand in for integer claim labels."""
    assert reason(data) == "malformed-cbor"
    assert loads_strict(b"\xa3\x01\x01\x61a\x02\x41b\x03") == {1: 1, "a": 2, b"b": 3}


@pytest.mark.parametrize("data", [b"\xa1\xf5\x01", b"\xa1\xfb\x40\x24\x00\x00\x00\x00\x00\x00\x01"],
                         ids=["true-as-1", "float-10.0"])
def test_map_key_rule_holds_inside_an_allowed_tag(data: bytes) -> None:
    """Inside tag content cbor2 builds immutable maps (its frozendict): the key rule applies to them too."""
    tagged = b"\xd2\x84\x40" + data + b"\x40\x40"  # 18([h'', {key: 1}, h'', h'']), a COSE_Sign1 shape
    with pytest.raises(CborError) as raised:
        loads_strict(tagged, allowed_tags=(18,))
    assert raised.value.reason == "malformed-cbor"
    assert loads_strict(b"\xd2\x84\x40\xa1\x04\x41k\x40\x40", allowed_tags=(18,)) is not None
