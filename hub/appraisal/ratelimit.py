"""Per-device token buckets: a flooding device cannot push other devices' evidence out.

Excess messages are dropped before any cryptography (counted and logged,
acknowledged so the broker does not redeliver them). The bucket table is
bounded: idle devices are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, max_devices: int = 200_000) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_devices = max_devices
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, device_id: str, now: float) -> bool:
        tokens, last = self._buckets.pop(device_id, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)  # a clock set back refills nothing
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[device_id] = (tokens, now)
        if len(self._buckets) > self.max_devices:
            self._buckets.popitem(last=False)
        return allowed
