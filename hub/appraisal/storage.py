"""What a verdict row keeps of the evidence, and how many rejected messages get a row at all.

Two rules bound the database whatever a device or the network sends
(docs/RELIABILITY.md#bounded-storage, docs/SECURITY.md):

- ``evidence_columns``: evidence that authenticated is evidence and is kept,
  byte for byte, up to ``max_evidence_bytes``; anything else (it did not
  authenticate, or it is over the limit) is kept as its SHA-256 and its
  length only, next to the reason in the verdict's problems;
- ``RejectionTally``: every rejection of an enrolled device's evidence is
  counted per device and minute (table ``rejection_count``); only the first
  ``rejected_rows_per_min`` per device and minute (per worker), holding at most
  ``rejected_bytes_per_min`` of kept evidence bytes between them, also get a
  verdict row, an audit entry and a signed result (beyond it, authenticated
  rejections still get their result, the device's receipt, but no row).
  Authenticated ones that are stored keep their bytes; a device that signs a flood of replays or stale
  evidence is flagged by the rejection-rate finding (hub/anomaly/rejections.py)
  and cannot grow the database faster than the unauthenticated kind.

Evidence for device ids that are not enrolled is never stored
(``Decider.unknown``): the worker counts it in a metric and a rate-limited
log line (hub/server/unknown.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StorageRules:
    max_evidence_bytes: int = 16 * 1024
    """Authenticated evidence up to this many bytes keeps its bytes (``Settings.max_evidence_bytes``)."""
    rejected_rows_per_min: int = 20
    """Per device and minute, rejections stored one by one (``Settings.rejected_rows_per_min``)."""
    rejected_bytes_per_min: int = 64 * 1024
    """Per device and minute, evidence bytes those rows may keep (``Settings.rejected_bytes_per_min``)."""


def kept_bytes(evidence: bytes, authenticated: bool, max_bytes: int) -> int:
    """How many bytes of ``evidence`` a verdict row keeps: all of it, or none (``evidence_columns``)."""
    return len(evidence) if authenticated and len(evidence) <= max_bytes else 0


def evidence_columns(evidence: bytes, authenticated: bool, max_bytes: int) -> dict[str, object]:
    """The ``evidence``, ``evidence_length`` and ``evidence_sha256`` columns of a verdict row.

    Bytes are kept only for authenticated evidence of at most ``max_bytes``; otherwise ``evidence`` is
    empty and ``evidence_sha256`` is the 32-byte SHA-256 (FIPS 180-4) of what was received.
    """
    if authenticated and len(evidence) <= max_bytes:  # as kept_bytes
        return {"evidence": evidence, "evidence_length": len(evidence), "evidence_sha256": None}
    return {"evidence": b"", "evidence_length": len(evidence), "evidence_sha256": hashlib.sha256(evidence).digest()}


class RejectionTally:
    """Counts of one batch's rejections (written by ``Decider.flush``) and this worker's per-minute budget of
    rejections that get a row. Memory is bounded by the devices seen in the current minute."""

    def __init__(self, rows_per_min: int = 20, bytes_per_min: int = 64 * 1024) -> None:
        self.rows_per_min = rows_per_min
        self.bytes_per_min = bytes_per_min
        self._minute = -1
        self._stored: dict[str, tuple[int, int]] = {}  # device -> (rows, kept bytes) this minute
        self._pending: dict[tuple[str, int], list[int]] = {}

    def count(self, device_id: str, now: float, authenticated: bool, size: int) -> None:
        """One rejected message of an enrolled device."""
        entry = self._pending.setdefault((device_id, int(now // 60)), [0, 0, 0])
        entry[0] += 1
        entry[1] += int(authenticated)
        entry[2] += size

    def admit(self, device_id: str, now: float, kept: int = 0) -> bool:
        """Whether a rejection whose row would keep ``kept`` evidence bytes gets a verdict row of its own: while
        the device has had fewer than ``rows_per_min`` rows and ``bytes_per_min`` kept bytes this minute."""
        minute = int(now // 60)
        if minute != self._minute:
            self._minute, self._stored = minute, {}
        rows, size = self._stored.get(device_id, (0, 0))
        if rows >= self.rows_per_min or size + kept > self.bytes_per_min:
            return False
        self._stored[device_id] = (rows + 1, size + kept)
        return True

    def drain(self) -> list[dict[str, object]]:
        """The batch's counts as ``rejection_count`` rows to add, and forget them."""
        rows: list[dict[str, object]] = [
            {"device_id": device_id, "minute": minute, "rejected": n, "authenticated": signed, "bytes_received": size}
            for (device_id, minute), (n, signed, size) in sorted(self._pending.items())
        ]
        self._pending = {}
        return rows

    def discard(self) -> None:
        """Forget the counts of a batch that was not committed (it is processed again)."""
        self._pending = {}

    def set_aside(self, keep: set[str]) -> dict[tuple[str, int], list[int]]:
        """Keep only the counts of the devices in ``keep``; return the others' (``restore`` adds them back)."""
        aside = {k: v for k, v in self._pending.items() if k[0] not in keep}
        self._pending = {k: v for k, v in self._pending.items() if k[0] in keep}
        return aside

    def restore(self, aside: dict[tuple[str, int], list[int]]) -> None:
        self._pending.update(aside)
