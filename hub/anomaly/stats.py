"""Behavioural anomaly detection over the verdict stream: the streaming state.

Rules judge one message at a time; this module keeps, per device, a small
summary of how it behaves over time so that a slow change (reports arriving
later and later, a climbing boot count, an unusual release appearing on a
few devices at once, signature failures) can be compared with the device's
own past and with its class. Everything here is pure: ``observe`` folds one
verdict into a device's ``DeviceStats``; ``hub.anomaly.scores.assess`` turns
the stats of the fleet into scored, explained assessments; the leader's pass
(``hub.anomaly.watch``) loads and stores the state and acts on the findings.

State per device is bounded (a few windows of ``window`` numbers) and kept
as JSON in the ``anomaly_stat`` table, so the detector survives restarts and
sees the whole fleet whichever worker received the evidence.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field, fields
from typing import TypeVar

CADENCE = "late-reports"
BOOTS = "boot-rate"
RARE = "rare-measurement"
SIGNATURES = "signature-failures"
REJECTIONS = "rejection-rate"
"""Rejected messages per minute over the class policy's ``rejected_per_min`` (hub/anomaly/rejections.py)."""
KINDS = (CADENCE, BOOTS, RARE, SIGNATURES, REJECTIONS)
STATUS_KINDS = frozenset({CADENCE, BOOTS, RARE, REJECTIONS})
"""Kinds that may change a device's status (by policy: ``anomaly``, or ``rejected`` for REJECTIONS).
Signature failures never do: anyone who can publish on a device's topic can cause them, and only
authenticated evidence may move a device. A rejection rate over the policy's limit may, because the
operator chose it per class (default: warn; quarantine belongs with the production broker ACL)."""

PLATFORM_SCHEMES = frozenset({"firmware", "psa", "tpm"})
"""Schemes whose evidence is the device's periodic attestation (cadence, boots, releases)."""

_T = TypeVar("_T", int, float)
_COUNTER = re.compile(r"^(\d{1,18}):(\d{1,18})$")


class AnomalyStateError(ValueError):
    """A stored detector state cannot be read (it is then started afresh)."""


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Thresholds and windows. Times are in units of the class's own reporting interval where possible,
    so the same settings work for a fleet reporting every 5 minutes and a test reporting every 0.2 s."""

    interval_s: float = 30.0
    """How often the leader runs a pass (0: never)."""
    threshold: float = 1.0
    """A finding opens at this score and closes below half of it."""
    settle_s: float = 2.0
    """A pass reads verdict ids visible for at least this long (a lower id may still be committing)."""
    window: int = 50
    """Reports per device kept for the boot and signature windows."""
    gap_window: int = 9
    """Inter-arrival gaps whose median is the device's current cadence."""
    min_reports: int = 8
    """Gaps a device needs before its cadence is judged (its own usual is learned from these)."""
    min_class: int = 5
    """Devices a class needs before class comparisons are made."""
    cadence_tolerance: float = 0.25
    """Relative lateness (vs its own usual and its class) that scores 1.0 when the class is steady."""
    reference_alpha: float = 0.02
    """How fast a device's own usual follows it while it keeps pace with its class."""
    boot_z: float = 3.0
    min_reboots: int = 3
    signature_z: float = 3.0
    min_failures: int = 3
    rare_share: float = 0.2
    """A release or measurement set run by less than this share of the class is rare."""
    rare_min_devices: int = 2
    """... and is a finding when at least this many devices took it up close together ..."""
    rare_window_intervals: float = 10.0
    """... within this many class reporting intervals (also the class's warm-up)."""


@dataclass(frozen=True, slots=True)
class VerdictEvent:
    """The metadata of one stored verdict that the detector uses."""

    device_id: str
    at: float
    scheme: str
    authenticated: bool
    rejected: bool
    counter: tuple[int, int] | None = None
    fingerprint: str | None = None
    version: str | None = None


def counter_of(dedup_key: str) -> tuple[int, int] | None:
    """``(bootcount, seq)`` from a ``"bootcount:seq"`` dedup key (the firmware scheme's), else None."""
    match = _COUNTER.match(dedup_key)
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass(slots=True)
class DeviceStats:
    """What the detector remembers about one device (mutable while a pass runs)."""

    device_id: str
    device_class: str
    first_at: float = 0.0
    last_at: float = 0.0
    gaps: list[float] = field(default_factory=list)
    reference_gap: float = 0.0
    learned: int = 0
    in_step: bool = True
    late_since: float | None = None
    bootcount: int | None = None
    boots: list[int] = field(default_factory=list)
    outcomes: list[int] = field(default_factory=list)
    fingerprint: str | None = None
    version: str | None = None
    fp_since: float = 0.0
    fp_switched: bool = False
    armed: dict[str, bool] = field(default_factory=dict)

    @property
    def cadence(self) -> float | None:
        """The median of the recent inter-arrival gaps (seconds), or None while too few are known."""
        return statistics.median(self.gaps) if self.gaps else None

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in _FIELDS}, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, device_id: str, device_class: str, text: str) -> DeviceStats:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise AnomalyStateError(f"{device_id}: state is not an object")
            data.update(device_id=device_id, device_class=device_class)
            return cls(**data)
        except (TypeError, json.JSONDecodeError) as exc:
            raise AnomalyStateError(f"{device_id}: {exc}") from exc


_FIELDS = fields(DeviceStats)


def _push(values: list[_T], value: _T, limit: int) -> None:
    values.append(value)
    del values[: max(0, len(values) - limit)]


def observe(stats: DeviceStats, event: VerdictEvent, config: DetectorConfig) -> None:
    """Fold one verdict (in arrival order) into the device's state."""
    _push(stats.outcomes, 0 if event.authenticated else 1, config.window)
    if not event.authenticated or event.rejected or event.scheme not in PLATFORM_SCHEMES:
        return
    if stats.last_at and event.at > stats.last_at:
        gap = event.at - stats.last_at
        _push(stats.gaps, gap, config.gap_window)
        if stats.learned < config.min_reports:
            stats.learned += 1
            stats.reference_gap = statistics.median(stats.gaps)
        elif stats.in_step:
            stats.reference_gap += config.reference_alpha * (min(gap, 4 * stats.reference_gap) - stats.reference_gap)
    if not stats.first_at:
        stats.first_at = event.at
    stats.last_at = max(stats.last_at, event.at)
    if event.counter is not None:
        bootcount = event.counter[0]
        climbed = bootcount - stats.bootcount if stats.bootcount is not None and bootcount > stats.bootcount else 0
        _push(stats.boots, min(climbed, 1000), config.window)
        stats.bootcount = bootcount if stats.bootcount is None else max(stats.bootcount, bootcount)
    if event.fingerprint is not None and event.fingerprint != stats.fingerprint:
        stats.fp_switched = stats.fingerprint is not None
        stats.fingerprint, stats.version, stats.fp_since = event.fingerprint, event.version, event.at


def duration(seconds: float) -> str:
    """A plain-language duration: ``0.8 s``, ``40 s``, ``12 min``, ``3 h``, ``2 days``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"
