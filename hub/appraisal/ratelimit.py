"""Per-device token buckets: a flooding device cannot push other devices' evidence out.

Excess messages are dropped before any cryptography (counted and logged,
acknowledged so the broker does not redeliver them). Only devices whose bucket
is not full are remembered: a bucket that has refilled (idle for burst / rate
seconds at most) is forgotten, since a device without one starts full, so the
table holds the devices seen in the last few seconds, not the fleet. It is also
bounded (``max_devices``, setting ``rate_limit_devices_max``): beyond it the
least recently seen device is forgotten first.
"""

from __future__ import annotations


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, max_devices: int = 200_000) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_devices = max_devices
        # device id -> (tokens, when counted), least recently seen first (a dict keeps insertion order)
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, device_id: str, now: float) -> bool:
        buckets = self._buckets
        tokens, last = buckets.pop(device_id, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)  # a clock set back refills nothing
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        buckets[device_id] = (tokens, now)
        while buckets:  # forget the least recently seen while their buckets are full again (same as absent)
            oldest = next(iter(buckets))
            old_tokens, old_last = buckets[oldest]
            if len(buckets) <= self.max_devices and old_tokens + (now - old_last) * self.rate < self.burst:
                break
            del buckets[oldest]
        return allowed
