"""Messages the hub sends to devices: the retained epoch and signed commands.

Both are COSE_Sign1 signed by the hub key. Parsing here checks authenticity and
shape only; whether a device *obeys* (its id, the expiry, the sequence number) is
decided by the device, which knows its own state and clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from device_sim import cose
from hub import wire

EPOCH_NONCE_SIZE = 32
STATE_CHANGING = frozenset({wire.COMMAND_QUARANTINE, wire.COMMAND_RELEASE, wire.COMMAND_REMEDIATE})


class Rejection(StrEnum):
    """Why a device refused a command."""

    FORGED = "forged"  # signature does not verify with the hub key, or alg not protected
    MALFORMED = "malformed"  # not a COSE_Sign1 / payload not a command
    MISADDRESSED = "misaddressed"  # SUB is another device
    EXPIRED = "expired"  # exp is not in the future
    REPLAYED = "replayed"  # state-changing command whose seq is not above the last applied


class MessageError(ValueError):
    """A hub message that must be ignored; ``reason`` says why."""

    def __init__(self, reason: Rejection, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Epoch:
    epoch_id: int
    nonce: bytes
    iat: int


@dataclass(frozen=True, slots=True)
class Command:
    type: str
    sub: str
    seq: int
    iat: int
    exp: int
    reason: str | None = None
    nonce: bytes | None = None
    receipts: tuple[tuple[int, int], ...] = ()
    release_name: str | None = None

    @property
    def state_changing(self) -> bool:
        return self.type in STATE_CHANGING


def _verified_payload(raw: bytes, hub_key: cose.VerifyKey) -> Mapping[object, object]:
    try:
        parts = cose.verify_sign1(raw, hub_key)
        payload = cose.loads_exact(parts.payload)
    except cose.CoseError as exc:
        reason = Rejection.FORGED if exc.reason == "forged" else Rejection.MALFORMED
        raise MessageError(reason, exc.detail) from exc
    if not isinstance(payload, Mapping):
        raise MessageError(Rejection.MALFORMED, "payload is not a map")
    return payload


def _uint(payload: Mapping[object, object], key: int, name: str) -> int:
    value = payload.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MessageError(Rejection.MALFORMED, f"{name} ({key}) must be an unsigned integer")
    return value


def _opt(payload: Mapping[object, object], key: int, kind: type[str] | type[bytes], name: str) -> str | bytes | None:
    value = payload.get(key)
    if value is not None and not isinstance(value, kind):
        raise MessageError(Rejection.MALFORMED, f"{name} ({key}) must be a {kind.__name__}")
    return value


def parse_epoch(raw: bytes, hub_key: cose.VerifyKey) -> Epoch:
    """A verified epoch announcement; raise MessageError if it must be ignored."""
    payload = _verified_payload(raw, hub_key)
    if payload.get(wire.EAT_PROFILE) != wire.EPOCH_PROFILE:
        raise MessageError(Rejection.MALFORMED, "not an epoch (wrong eat_profile)")
    nonce = payload.get(wire.NONCE)
    if not isinstance(nonce, bytes) or len(nonce) != EPOCH_NONCE_SIZE:
        raise MessageError(Rejection.MALFORMED, f"epoch nonce must be {EPOCH_NONCE_SIZE} bytes")
    return Epoch(_uint(payload, wire.EPOCH_ID, "epoch id"), nonce, _uint(payload, wire.IAT, "iat"))


def parse_command(raw: bytes, hub_key: cose.VerifyKey) -> Command:
    """A verified, well-formed command; raise MessageError(FORGED | MALFORMED) otherwise."""
    payload = _verified_payload(raw, hub_key)
    kind = payload.get(wire.CMD_TYPE)
    if kind not in wire.COMMAND_TYPES or not isinstance(kind, str):
        raise MessageError(Rejection.MALFORMED, f"unknown command type {kind!r}")
    sub = payload.get(wire.SUB)
    if not isinstance(sub, str):
        raise MessageError(Rejection.MALFORMED, "sub (2) must be a text string")
    reason = _opt(payload, wire.CMD_REASON, str, "reason")
    nonce = _opt(payload, wire.NONCE, bytes, "nonce")
    release_name = _opt(payload, wire.CMD_RELEASE_NAME, str, "release name")
    if kind == wire.COMMAND_CHALLENGE and nonce is None:
        raise MessageError(Rejection.MALFORMED, "a challenge needs a nonce (10)")
    return Command(
        type=kind,
        sub=sub,
        seq=_uint(payload, wire.CMD_SEQ, "command seq"),
        iat=_uint(payload, wire.IAT, "iat"),
        exp=_uint(payload, wire.EXP, "exp"),
        reason=reason if isinstance(reason, str) else None,
        nonce=nonce if isinstance(nonce, bytes) else None,
        receipts=_receipts(payload.get(wire.CMD_RECEIPTS)) if kind == wire.COMMAND_RECEIPT else (),
        release_name=release_name if isinstance(release_name, str) else None,
    )


def _receipts(value: object) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, (list, tuple)):
        raise MessageError(Rejection.MALFORMED, "receipts (-65553) must be an array")
    out: list[tuple[int, int]] = []
    for entry in value:
        if (
            not isinstance(entry, (list, tuple))
            or len(entry) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in entry)
        ):
            raise MessageError(Rejection.MALFORMED, "a receipt is [bootcount, seq]")
        out.append((int(entry[0]), int(entry[1])))
    return tuple(out)
