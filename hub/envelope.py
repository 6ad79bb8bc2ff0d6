"""Messages as the pipeline sees them, independent of the MQTT client library."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    payload: bytes
    content_type: str | None = None
    trace_id: str | None = None
    token: int = 0  # the transport's acknowledgement handle (MQTT packet id)
    qos: int = 1
    received_at: float = 0.0  # time.monotonic() when the transport received it
    redelivered: bool = False  # MQTT DUP: the broker sent it before and got no acknowledgement


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    retain: bool = False
    content_type: str | None = None
    trace_id: str | None = None
