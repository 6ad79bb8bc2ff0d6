"""Turning a processed batch into metrics (the worker calls this once per batch)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from hub.anomaly.stats import KINDS
from hub.anomaly.watch import PassResult
from hub.appraisal.pipeline import BatchOutcome
from hub.appraisal.verdicts import DUPLICATE, LATE, REJECTED, UNKNOWN_DEVICE
from hub.envelope import Incoming
from hub.server.metrics import HubMetrics


def record_batch(metrics: HubMetrics, batch: Sequence[Incoming], outcome: BatchOutcome, commit_s: float,
                 classes: dict[str, str]) -> None:
    """Counters and histograms for one committed, published and acknowledged batch.

    Latencies run from the moment the transport received each message to now
    (after the broker acknowledged the hub's results and commands).
    """
    now = time.monotonic()
    metrics.batch_size.observe(len(batch))
    metrics.commit.observe(commit_s)
    for message in batch:
        if message.received_at:
            metrics.processing.observe(now - message.received_at)
    first = min((m.received_at for m in batch if m.received_at), default=now)
    # Counted per batch, then one labelled increment per distinct label (a labels() lookup costs more
    # than the increment; a batch has few distinct labels).
    dropped = Counter(why for _topic, why in outcome.dropped)
    received: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    verified: Counter[str] = Counter()
    verdicts: Counter[tuple[str, str]] = Counter()
    commands: Counter[str] = Counter()
    duplicates = quarantines = releases = unknown = late = 0
    for decision in outcome.decisions:
        received[decision.scheme] += 1
        if decision.status == DUPLICATE:
            duplicates += 1
            continue
        if decision.status == REJECTED:
            rejected[decision.reason or "rejected"] += 1
            if decision.reason == UNKNOWN_DEVICE:
                unknown += 1
            continue
        verified[decision.scheme] += 1
        verdicts[(decision.status, classes.get(decision.device_id, "?"))] += 1
        late += decision.action == LATE
        if decision.action == "quarantine":
            quarantines += 1
            metrics.time_to_quarantine.observe(now - first)
        elif decision.action == "release":
            releases += 1
        for out in decision.publishes:
            if out.topic.endswith("/cmd"):
                commands[decision.action] += 1
    for why, count in dropped.items():
        metrics.dropped.labels(why=why).inc(count)
    for scheme, count in received.items():
        metrics.received.labels(scheme=scheme).inc(count)
    for reason, count in rejected.items():
        metrics.rejected.labels(reason=reason).inc(count)
    for scheme, count in verified.items():
        metrics.verified.labels(scheme=scheme).inc(count)
    for (tier, device_class), count in verdicts.items():
        metrics.verdicts.labels(tier=tier, device_class=device_class).inc(count)
    for kind, count in commands.items():
        metrics.commands.labels(kind=kind).inc(count)
    if duplicates:
        metrics.duplicates.inc(duplicates)
    if late:
        metrics.late.inc(late)
    if quarantines:
        metrics.quarantines.inc(quarantines)
    if releases:
        metrics.releases.inc(releases)
    if unknown:
        metrics.unknown_devices.inc(unknown)


def export_anomalies(metrics: HubMetrics, result: PassResult) -> None:
    """The leader's gauges: open findings by kind, devices by status."""
    for kind in KINDS:
        metrics.anomalies.labels(kind=kind).set(result.open_by_kind.get(kind, 0))
    metrics.devices.clear()
    for status, count in result.devices_by_status.items():
        metrics.devices.labels(status=status).set(count)
