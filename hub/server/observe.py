"""Turning a processed batch into metrics (the worker calls this once per batch)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from hub.anomaly.stats import KINDS
from hub.anomaly.watch import PassResult
from hub.appraisal.pipeline import BatchOutcome
from hub.appraisal.verdicts import DUPLICATE, REJECTED, UNKNOWN_DEVICE
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
    for _topic, why in outcome.dropped:
        metrics.dropped.labels(why=why).inc()
    for decision in outcome.decisions:
        metrics.received.labels(scheme=decision.scheme).inc()
        if decision.status == DUPLICATE:
            metrics.duplicates.inc()
            continue
        if decision.status == REJECTED:
            metrics.rejected.labels(reason=decision.reason or "rejected").inc()
            if decision.reason == UNKNOWN_DEVICE:
                metrics.unknown_devices.inc()
            continue
        metrics.verified.labels(scheme=decision.scheme).inc()
        metrics.verdicts.labels(tier=decision.status, device_class=classes.get(decision.device_id, "?")).inc()
        if decision.action == "quarantine":
            metrics.quarantines.inc()
            metrics.time_to_quarantine.observe(now - first)
        elif decision.action == "release":
            metrics.releases.inc()
        for out in decision.publishes:
            if out.topic.endswith("/cmd"):
                metrics.commands.labels(kind=decision.action).inc()


def export_anomalies(metrics: HubMetrics, result: PassResult) -> None:
    """The leader's gauges: open findings by kind, devices by status."""
    for kind in KINDS:
        metrics.anomalies.labels(kind=kind).set(result.open_by_kind.get(kind, 0))
    metrics.devices.clear()
    for status, count in result.devices_by_status.items():
        metrics.devices.labels(status=status).set(count)
