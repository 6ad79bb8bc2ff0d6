"""Prometheus metrics of one hub worker, in a registry of its own (no process-wide globals).

Each worker serves its registry on ``metrics_port + index`` (see ``hub.server.http``);
Prometheus scrapes every worker. Label sets are bounded: schemes, reasons,
tiers, classes, statuses and command kinds are small closed vocabularies.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class HubMetrics:
    def __init__(self, worker: str = "w0") -> None:
        self.registry = CollectorRegistry()
        labels = {"worker": worker}
        r = self.registry
        self.received = Counter("attest_evidence_received", "Evidence messages received", ["scheme"], registry=r)
        self.verified = Counter("attest_evidence_verified", "Evidence authenticated and fresh", ["scheme"],
                                registry=r)
        self.rejected = Counter("attest_evidence_rejected", "Evidence rejected, by reason", ["reason"], registry=r)
        self.duplicates = Counter("attest_evidence_duplicates", "Redelivered evidence (no second verdict)",
                                  registry=r)
        self.late = Counter("attest_evidence_late", "Evidence judged after newer evidence of its device (below "
                            "its counter mark, within the anti-replay window)", registry=r)
        self.unknown_devices = Counter("attest_unknown_device_messages",
                                       "Evidence for device ids that are not enrolled (counted, not stored)",
                                       registry=r)
        self.dropped = Counter("attest_messages_dropped", "Messages not appraised (rate limit, bad topic)", ["why"],
                               registry=r)
        self.verdicts = Counter("attest_verdicts", "Verdicts by tier and device class", ["tier", "device_class"],
                                registry=r)
        self.quarantines = Counter("attest_quarantines", "Quarantine commands issued", registry=r)
        self.releases = Counter("attest_releases", "Release commands issued", registry=r)
        self.commands = Counter("attest_commands_sent", "Signed commands published", ["kind"], registry=r)
        self.processing = Histogram("attest_processing_seconds", "Receipt to results acknowledged by the broker",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.time_to_quarantine = Histogram("attest_time_to_quarantine_seconds",
                                            "Receipt of contraindicated evidence to quarantine command acknowledged",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.commit = Histogram("attest_db_commit_seconds", "Batch decide-and-commit time", buckets=LATENCY_BUCKETS,
                                registry=r)
        self.batch_size = Histogram("attest_batch_size", "Messages per batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r)
        self.queue_depth = Gauge("attest_queue_depth", "Messages received and not yet processed", registry=r)
        self.broker_connected = Gauge("attest_broker_connected", "1 when connected to the broker", registry=r)
        self.database_ok = Gauge("attest_database_ok", "1 when the last commit succeeded", registry=r)
        self.devices = Gauge("attest_devices", "Devices by status (leader worker only)", ["status"], registry=r)
        self.anomalies = Gauge("attest_anomaly_findings", "Open anomaly findings by kind", ["kind"], registry=r)
        self.retained_replaced = Counter("attest_retained_replaced",
                                         "Retained hub announcements (hub/epoch, hub/generation) replaced by a "
                                         "message this hub did not publish; the leader publishes its own again",
                                         ["topic"], registry=r)
        self.info = Gauge("attest_worker_info", "Worker identity", list(labels), registry=r)
        self.info.labels(**labels).set(1)
