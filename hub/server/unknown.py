"""Evidence for device ids that are not enrolled: counted, and named in at most one log line per interval.

The pipeline stores nothing for such messages (hub/appraisal/storage.py); on a
broker without ACLs anyone can publish on ``fleet/<random id>/evidence``, so
one line per message would let them fill the log instead of the database.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from hub.appraisal.verdicts import UNKNOWN_DEVICE, Decision

log = logging.getLogger(__name__)

SAMPLE = 5
"""Device ids named in a log line."""
_DISTINCT_MAX = 10_000


class UnknownDeviceLog:
    """Per worker: messages and distinct ids since the last line (ids bounded by ``_DISTINCT_MAX``)."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self.messages = 0
        self._ids: set[str] = set()
        self._sample: list[str] = []
        self._next_at: float | None = None

    def note(self, decisions: Iterable[Decision], now: float) -> int:
        """Count the batch's unknown-device decisions; log once the interval has passed. ``now``: monotonic
        seconds. Returns how many of the batch were for unknown ids."""
        found = 0
        for decision in decisions:
            if decision.reason != UNKNOWN_DEVICE:
                continue
            found += 1
            if len(self._ids) < _DISTINCT_MAX:
                self._ids.add(decision.device_id)
            if len(self._sample) < SAMPLE and decision.device_id not in self._sample:
                self._sample.append(decision.device_id)
        self.messages += found
        if self._next_at is None:
            self._next_at = now  # the first unknown id is reported at once
        if self.messages and now >= self._next_at:
            self.flush(now)
        return found

    def flush(self, now: float) -> None:
        distinct = f"{len(self._ids)}{'+' if len(self._ids) >= _DISTINCT_MAX else ''}"
        log.warning("evidence for device ids that are not enrolled: %d message(s) from %s id(s), e.g. %s; not stored",
                    self.messages, distinct, ", ".join(repr(i[:64]) for i in self._sample))
        self.messages, self._ids, self._sample = 0, set(), []
        self._next_at = now + self.interval_s
