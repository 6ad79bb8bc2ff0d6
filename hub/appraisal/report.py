"""The fleet compliance summary behind ``attest-hub report``.

How many devices are in each status, per class; which firmware versions run
where; which quarantines are open, since when and why; which devices have not
been heard from. Read-only; built from the device and command tables.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from hub.appraisal import transitions
from hub.store.db import Store


@dataclass(frozen=True, slots=True)
class OpenQuarantine:
    device_id: str
    device_class: str
    since: float | None
    age_s: float | None
    reason: str
    held_for_operator: bool


@dataclass(frozen=True, slots=True)
class FleetReport:
    generated_at: float
    total: int
    by_status: dict[str, int]
    by_class: dict[str, dict[str, int]]
    firmware: dict[str, dict[str, int]]
    quarantines: tuple[OpenQuarantine, ...]
    silent: tuple[str, ...]
    """Devices not seen for longer than the silence threshold (or never), revoked ones excluded."""
    silent_after_s: float
    never_seen: tuple[str, ...] = ()
    """Of ``silent``, the devices that never sent evidence (just enrolled, or never switched on)."""

    def to_json(self) -> dict[str, object]:
        return {
            "generated_at": self.generated_at, "total": self.total, "by_status": self.by_status,
            "by_class": self.by_class, "firmware": self.firmware,
            "open_quarantines": [
                {"device_id": q.device_id, "device_class": q.device_class, "since": q.since, "age_s": q.age_s,
                 "reason": q.reason, "held_for_operator": q.held_for_operator} for q in self.quarantines
            ],
            "silent": list(self.silent), "silent_after_s": self.silent_after_s,
            "never_seen": list(self.never_seen),
        }


def build_report(store: Store, *, now: float | None = None, silent_after_s: float = 24 * 3600) -> FleetReport:
    at = time.time() if now is None else now
    with store.reading() as conn:
        devices = store.list_devices(conn)
        commands = store.open_quarantine_commands(conn)
    by_status = Counter(d.status for d in devices)
    by_class: dict[str, Counter[str]] = defaultdict(Counter)
    firmware: dict[str, Counter[str]] = defaultdict(Counter)
    quarantines = []
    silent = []
    for device in devices:
        by_class[device.device_class][device.status] += 1
        firmware[device.device_class][device.firmware_version or "unknown"] += 1
        if device.status == transitions.QUARANTINED:
            command = commands.get(device.device_id)
            since = float(command["issued_at"]) if command else None
            quarantines.append(OpenQuarantine(device.device_id, device.device_class, since,
                                              None if since is None else max(0.0, at - since),
                                              str(command["reason"]) if command else "", device.quarantine_hold))
        if not device.revoked and (device.last_seen is None or at - device.last_seen > silent_after_s):
            silent.append(device.device_id)
    quarantines.sort(key=lambda q: (q.since is None, q.since or 0.0))
    return FleetReport(
        generated_at=at, total=len(devices), by_status=dict(sorted(by_status.items())),
        by_class={c: dict(sorted(v.items())) for c, v in sorted(by_class.items())},
        firmware={c: dict(sorted(v.items())) for c, v in sorted(firmware.items())},
        quarantines=tuple(quarantines), silent=tuple(silent), silent_after_s=silent_after_s,
        never_seen=tuple(d.device_id for d in devices if d.last_seen is None and not d.revoked),
    )


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``6h``, ``7d`` (or plain seconds) to seconds; ValueError, whose message names the
    text and the accepted forms, for anything else: not a number, negative, infinite or not a number (NaN)."""
    value = text.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}.get(value[-1:])
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0) or not number.replace(".", "", 1).isdigit():
        raise ValueError(f"{text!r} is not a duration: a number with s, m, h, d or w (e.g. 90s, 15m, 6h, 2d)")
    return seconds
