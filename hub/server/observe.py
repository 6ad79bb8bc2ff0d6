"""Turning a processed batch into metrics (the worker calls this once per batch)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from hub.envelope import Incoming
from hub.metrics import HubMetrics
from hub.pipeline import BatchOutcome
from hub.verdicts import DUPLICATE, REJECTED


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
