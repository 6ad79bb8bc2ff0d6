"""Freshness: stateless epoch and challenge nonces (RFC 9334 section 10).

Every nonce is 32 bytes (PSA tokens, RFC 9783, accept 32, 48 or 64), so any
hub worker holding the nonce secret can check one without shared memory:

* epoch nonce:     ``"E" || epoch (8, big-endian) || HMAC(secret, "epoch" || epoch)[:23]``
* challenge nonce: ``"C" || epoch (8) || random (7) || HMAC(secret, "challenge" || device id || epoch || random)[:16]``

A nonce is fresh while its epoch is the current or the previous one. The
current epoch is a counter the hub advances on a timer and keeps in the
database; no verdict depends on the device's clock or the wall clock.
Challenge nonces are bound to one device and accepted once (the orchestrator
records them in the ``used_nonce`` table inside the verdict's transaction).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from hub import wire

NONCE_SIZE = 32


@dataclass(frozen=True, slots=True)
class NonceCheck:
    ok: bool
    kind: str  # "epoch" | "challenge" | "unknown"
    epoch: int
    problem: str = ""


def _mac(secret: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"".join(parts), hashlib.sha256).digest()


def epoch_nonce(secret: bytes, epoch: int) -> bytes:
    epoch_bytes = epoch.to_bytes(8, "big")
    return wire.NONCE_EPOCH_PREFIX + epoch_bytes + _mac(secret, b"epoch", epoch_bytes)[:23]


def challenge_nonce(secret: bytes, device_id: str, epoch: int, random: bytes | None = None) -> bytes:
    epoch_bytes = epoch.to_bytes(8, "big")
    rand = os.urandom(7) if random is None else random
    if len(rand) != 7:
        raise ValueError("challenge randomness must be 7 bytes")
    tag = _mac(secret, b"challenge", device_id.encode(), b"\x00", epoch_bytes, rand)[:16]
    return wire.NONCE_CHALLENGE_PREFIX + epoch_bytes + rand + tag


def check_nonce(secret: bytes, nonce: bytes | None, device_id: str, current_epoch: int) -> NonceCheck:
    """Is ``nonce`` one this hub issued, for this device, in the current or previous epoch?"""
    if nonce is None:
        return NonceCheck(False, "unknown", -1, "no nonce claim")
    if len(nonce) != NONCE_SIZE:
        return NonceCheck(False, "unknown", -1, f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    prefix, epoch_bytes = nonce[:1], nonce[1:9]
    epoch = int.from_bytes(epoch_bytes, "big")
    if prefix == wire.NONCE_EPOCH_PREFIX:
        kind = "epoch"
        expected = _mac(secret, b"epoch", epoch_bytes)[:23]
        genuine = hmac.compare_digest(expected, nonce[9:])
    elif prefix == wire.NONCE_CHALLENGE_PREFIX:
        kind = "challenge"
        expected = _mac(secret, b"challenge", device_id.encode(), b"\x00", epoch_bytes, nonce[9:16])[:16]
        genuine = hmac.compare_digest(expected, nonce[16:])
    else:
        return NonceCheck(False, "unknown", -1, "nonce was not issued by this hub")
    if not genuine:
        what = "for this device" if kind == "challenge" else "by this hub"
        return NonceCheck(False, kind, epoch, f"{kind} nonce was not issued {what}")
    if epoch > current_epoch:
        return NonceCheck(False, kind, epoch, f"{kind} nonce is from a future epoch {epoch}")
    if epoch < current_epoch - 1:
        return NonceCheck(False, kind, epoch, f"stale {kind} nonce: epoch {epoch}, current {current_epoch}")
    return NonceCheck(True, kind, epoch)
