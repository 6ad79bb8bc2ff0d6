"""The hub's PUBLISH properties are encoded once, by hand: the bytes must be exactly what paho's own
``Properties.pack`` writes, and the object must still read like paho's (ContentType, UserProperty)."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub import wire
from hub.broker.transport import _PublishProperties, publish_properties

CASES = [
    (wire.EAR_MEDIA_TYPE, "0123456789abcdef"),
    (wire.FIRMWARE_MEDIA_TYPE, None),
    (None, "t" * 64),
    (None, None),
    ("application/x; ü=✓", "trace-ünïcode"),
    ("c" * 300, "x"),  # a two-byte variable-length total
]


@pytest.mark.parametrize(("content_type", "trace_id"), CASES)
def test_encoding_equals_paho(content_type: str | None, trace_id: str | None) -> None:
    reference = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if content_type:
        reference.ContentType = content_type
    if trace_id:
        reference.UserProperty = [("trace-id", trace_id)]
    prototype = _PublishProperties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    fast = publish_properties(prototype, content_type, trace_id)
    assert fast.pack() == reference.pack()  # type: ignore[no-untyped-call]
    assert isinstance(fast, Properties)
    assert getattr(fast, "ContentType", None) == (content_type or None)
    assert getattr(fast, "UserProperty", None) == ([("trace-id", trace_id)] if trace_id else None)
    assert prototype.pack() == b"\x00"  # the shared prototype is never changed
