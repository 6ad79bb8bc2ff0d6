"""The rejection-rate finding: a device whose rejected messages per minute reach its class policy's limit.

Every rejection of an enrolled device's evidence is counted per minute in
``rejection_count`` (hub/store/rejections.py), including the ones over the
storage budget that get no verdict row. The leader's pass
(hub/anomaly/watch.py) scores each device by the busier of the current and
the previous minute against ``Policy.rejected_per_min``: the score reaches the
detector's threshold exactly at the limit, so the finding opens there and
closes below half of it; ``Policy.rejected`` decides what it does to the device.
Pure: counts in, assessments out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from hub.anomaly.scores import Assessment
from hub.anomaly.stats import REJECTIONS
from hub.reference.policy import Policy


def assess_rejections(counts: Mapping[str, Mapping[int, int]], classes: Mapping[str, str],
                      policy: Callable[[str], Policy], now: float, threshold: float,
                      open_devices: Iterable[str] = ()) -> list[Assessment]:
    """One assessment per enrolled device with counts in the last two minutes or an open finding.

    ``counts``: device id -> {minute (Unix time // 60): rejected}; ``classes``: device id -> class.
    """
    minute = int(now // 60)
    out: list[Assessment] = []
    for device_id in sorted(set(counts) | set(open_devices)):
        device_class = classes.get(device_id)
        if device_class is None:
            continue
        limit = policy(device_class).rejected_per_min
        recent = counts.get(device_id, {})
        rate = max(recent.get(minute, 0), recent.get(minute - 1, 0))
        score = threshold * rate / limit if limit else 0.0
        text = (f"{device_id}: {rate} messages rejected within a minute; the {device_class} policy allows "
                f"{limit} a minute (bad signatures, garbage, replays or stale nonces on its topic)")
        out.append(Assessment(device_id, device_class, REJECTIONS, round(score, 3), text if rate else "",
                              {"rejected_per_min": rate, "limit": limit}))
    return out
