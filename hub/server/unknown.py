"""Messages the hub does not store one by one, logged as counts with a sample, at most once per interval.

Evidence for device ids that are not enrolled is counted, not stored
(hub/appraisal/storage.py), and messages the rate limiter or the topic check
drops are not appraised at all. On a broker without ACLs anyone can publish on
``fleet/<random id>/evidence``, and a flooding device sends as fast as it can:
one log line per message would let them fill the log instead of the database.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from hub.appraisal.verdicts import UNKNOWN_DEVICE, Decision

log = logging.getLogger(__name__)

SAMPLE = 5
"""Subjects (device ids, topics) named in a log line."""
_DISTINCT_MAX = 10_000


class SampledLog:
    """Counts events since the last line and the distinct subjects among them (bounded by ``_DISTINCT_MAX``);
    ``line`` is formatted with ``messages``, ``distinct`` and ``sample``."""

    def __init__(self, line: str, interval_s: float = 60.0) -> None:
        self.line = line
        self.interval_s = interval_s
        self.messages = 0
        self._subjects: set[str] = set()
        self._sample: list[str] = []
        self._next_at: float | None = None

    def add(self, subjects: Iterable[str], now: float) -> int:
        """Count events (one per subject given, repeats included); log once the interval has passed.
        ``now``: monotonic seconds. Returns how many were added."""
        found = 0
        for subject in subjects:
            found += 1
            if len(self._subjects) < _DISTINCT_MAX:
                self._subjects.add(subject)
            if len(self._sample) < SAMPLE and subject not in self._sample:
                self._sample.append(subject)
        self.messages += found
        if self._next_at is None:
            self._next_at = now  # the first event is reported at once
        if self.messages and now >= self._next_at:
            self.flush(now)
        return found

    def flush(self, now: float) -> None:
        distinct = f"{len(self._subjects)}{'+' if len(self._subjects) >= _DISTINCT_MAX else ''}"
        log.warning(self.line.format(messages=self.messages, distinct=distinct,
                                     sample=", ".join(repr(s[:100]) for s in self._sample)))
        self.messages, self._subjects, self._sample = 0, set(), []
        self._next_at = now + self.interval_s


class UnknownDeviceLog(SampledLog):
    """Evidence for device ids that are not enrolled."""

    def __init__(self, interval_s: float = 60.0) -> None:
        super().__init__("evidence for device ids that are not enrolled: {messages} message(s) from {distinct} id(s), "
                         "e.g. {sample}; not stored", interval_s)

    def note(self, decisions: Iterable[Decision], now: float) -> int:
        """Count the batch's unknown-device decisions. Returns how many of the batch were for unknown ids."""
        return self.add((d.device_id[:64] for d in decisions if d.reason == UNKNOWN_DEVICE), now)


def dropped_log(interval_s: float = 60.0) -> SampledLog:
    """Messages not appraised (rate limit, not a device topic), named by topic and reason."""
    return SampledLog("{messages} message(s) not appraised, on {distinct} topic(s) and reason(s), e.g. {sample}",
                      interval_s)
