"""Scoring the fleet's streaming state: one ``Assessment`` per device and kind, with an explanation.

A score of 1.0 means "as unusual as the configured tolerance"; the leader
opens a finding at ``DetectorConfig.threshold`` (1.0 by default). Each kind
compares a device with its own past and with the rest of its class, so that
a fleet-wide change (a slow broker, a power cut, an announced rollout to
most devices) does not single out anyone. See docs/OBSERVABILITY.md.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hub.anomaly.stats import BOOTS, CADENCE, RARE, SIGNATURES, DetectorConfig, DeviceStats, duration


@dataclass(frozen=True, slots=True)
class Assessment:
    device_id: str
    device_class: str
    kind: str
    score: float
    explanation: str
    detail: dict[str, object] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class ClassView:
    """Aggregates of one device class, computed afresh at every pass."""

    device_class: str
    size: int
    cadence: float | None
    spread: float
    boots: int
    reports: int
    failures: int
    messages: int
    fingerprints: Mapping[str, int]
    first_at: float


def class_views(stats: Iterable[DeviceStats], config: DetectorConfig) -> dict[str, ClassView]:
    groups: dict[str, list[DeviceStats]] = defaultdict(list)
    for s in stats:
        groups[s.device_class].append(s)
    views: dict[str, ClassView] = {}
    for cls, members in groups.items():
        cadences = [c for s in members if s.learned >= config.min_reports and (c := s.cadence)]
        middle = statistics.median(cadences) if len(cadences) >= config.min_class else None
        spread = statistics.median(abs(c / middle - 1) for c in cadences) if middle else 0.0
        views[cls] = ClassView(
            cls, len(members), middle, spread,
            sum(sum(s.boots) for s in members), sum(len(s.boots) for s in members),
            sum(sum(s.outcomes) for s in members), sum(len(s.outcomes) for s in members),
            Counter(s.fingerprint for s in members if s.fingerprint is not None),
            min((s.first_at for s in members if s.first_at), default=0.0),
        )
    return views


def assess(stats: Mapping[str, DeviceStats], now: float, config: DetectorConfig,
           known: Mapping[str, frozenset[str]] | None = None) -> list[Assessment]:
    """Score every device for every kind it has enough data for (scores below the threshold included).

    ``known`` lists, per class, measurement sets an operator acknowledged (never rare).
    Updates ``late_since`` and ``in_step`` in the stats (the caller stores them).
    """
    views = class_views(stats.values(), config)
    out: list[Assessment] = []
    for s in stats.values():
        view = views[s.device_class]
        for scored in (_cadence(s, view, now, config), _boots(s, view, config), _signatures(s, view, config)):
            if scored is not None:
                out.append(scored)
    for cls, view in views.items():
        members = [s for s in stats.values() if s.device_class == cls]
        out += _rare(members, view, config, (known or {}).get(cls, frozenset()))
    return out


def _cadence(s: DeviceStats, view: ClassView, now: float, config: DetectorConfig) -> Assessment | None:
    own = s.cadence
    if own is None or s.learned < config.min_reports or not view.cadence or not s.reference_gap:
        return None
    self_ratio, class_ratio = own / s.reference_gap, own / view.cadence
    tolerance = max(config.cadence_tolerance, 4 * view.spread)
    excess = min(self_ratio, class_ratio) - 1
    score = max(0.0, excess / tolerance)
    s.in_step = class_ratio - 1 < tolerance / 2
    if score >= config.threshold / 2:
        s.late_since = s.late_since or s.last_at
    else:
        s.late_since = None
    since = f", for {duration(now - s.late_since)}" if s.late_since else ""
    text = (f"{s.device_id}: evidence arrives {excess:.0%} later than its own usual and than its class's "
            f"(every {own:.3g} s; its usual {s.reference_gap:.3g} s; {view.device_class} median {view.cadence:.3g} s)"
            f"{since}")
    return Assessment(s.device_id, s.device_class, CADENCE, round(score, 3), text,
                      {"cadence_s": own, "usual_s": s.reference_gap, "class_s": view.cadence, "tolerance": tolerance})


def _poisson_score(count: int, n: int, class_count: int, class_n: int, z: float, minimum: int) -> tuple[float, float]:
    """Score of ``count`` events in ``n`` trials against the rest of the class's rate (leave-one-out)."""
    rest_n = class_n - n
    rate = (class_count - count) / rest_n if rest_n > 0 else 0.0
    expected = rate * n
    deviation = (count - expected) / math.sqrt(expected + 1)
    return max(0.0, deviation / z) * min(1.0, count / minimum), expected


def _boots(s: DeviceStats, view: ClassView, config: DetectorConfig) -> Assessment | None:
    n = len(s.boots)
    if n < config.min_reports or view.size < config.min_class:
        return None
    count = sum(s.boots)
    score, expected = _poisson_score(count, n, view.boots, view.reports, config.boot_z, config.min_reboots)
    text = (f"{s.device_id}: boot count climbed by {count} over its last {n} reports (now {s.bootcount}); "
            f"other {view.device_class} devices average {expected:.1f} in as many reports")
    return Assessment(s.device_id, s.device_class, BOOTS, round(score, 3), text,
                      {"reboots": count, "reports": n, "class_expected": round(expected, 3)})


def _signatures(s: DeviceStats, view: ClassView, config: DetectorConfig) -> Assessment | None:
    n = len(s.outcomes)
    count = sum(s.outcomes)
    if count == 0 or view.size < config.min_class:
        return None
    score, expected = _poisson_score(count, n, view.failures, view.messages, config.signature_z, config.min_failures)
    text = (f"{s.device_id}: {count} of its last {n} messages failed authentication (bad signature, wrong key); "
            f"other {view.device_class} devices average {expected:.1f} in as many")
    return Assessment(s.device_id, s.device_class, SIGNATURES, round(score, 3), text,
                      {"failures": count, "messages": n, "class_expected": round(expected, 3)})


def _rare(members: list[DeviceStats], view: ClassView, config: DetectorConfig,
          known: frozenset[str]) -> list[Assessment]:
    """Devices that took up a rarely-run release or measurement set, several close together in time."""
    total = sum(view.fingerprints.values())
    if total < config.min_class or not view.cadence:
        return []
    window = config.rare_window_intervals * view.cadence
    warm_end = view.first_at + window
    out: list[Assessment] = []
    for fingerprint, count in view.fingerprints.items():
        share = count / total
        holders = [s for s in members if s.fingerprint == fingerprint]
        flagged: set[str] = set()
        if share < config.rare_share and fingerprint not in known:
            arrivals = sorted((s.fp_since, s.device_id) for s in holders if s.fp_switched or s.fp_since > warm_end)
            for i, (start, _) in enumerate(arrivals):
                cluster = [d for t, d in arrivals[i:] if t - start <= window]
                if len(cluster) >= config.rare_min_devices:
                    flagged.update(cluster)
        for s in holders:
            if s.device_id not in flagged:
                out.append(Assessment(s.device_id, s.device_class, RARE, 0.0, "", {}))
                continue
            together = sum(1 for h in holders if h.device_id in flagged)
            score = config.rare_share / share
            text = (f"{s.device_id}: reports release {s.version or '?'} (measurement set {fingerprint[:12]}), "
                    f"approved but run by only {count} of {total} {view.device_class} devices ({share:.0%}); "
                    f"{together} devices took it up within {duration(window)} of each other")
            out.append(Assessment(s.device_id, s.device_class, RARE, round(score, 3), text,
                                  {"fingerprint": fingerprint, "version": s.version, "holders": count,
                                   "class_size": total, "together": together}))
    return out
