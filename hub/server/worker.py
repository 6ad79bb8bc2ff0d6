"""``attest-hub serve``: one worker's event loop.

Receive a batch, hand evidence to the pipeline, publish what it returns,
wait for the broker's PUBACKs, and only then acknowledge the batch. When the
database cannot commit, the batch is retried with backoff and nothing is
acknowledged, so the broker keeps the messages (the hub "stops acknowledging
while it cannot commit"). Worker 0 also advances the epoch nonce.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from hub import wire
from hub.anomaly.watch import AnomalyWatch, detector_config, fleet_counts
from hub.appraisal.liveness import sweep_missed
from hub.appraisal.messages import epoch_message
from hub.appraisal.operations import OperationError, read_policy_announcement
from hub.appraisal.pipeline import BatchOutcome, Pipeline
from hub.appraisal.ratelimit import RateLimiter
from hub.appraisal.transitions import QUARANTINED, REVOKED
from hub.broker.enforcement import BrokerEnforcer, EnforcementError, enforcer_from_settings
from hub.broker.transport import BrokerAddress, MqttTransport
from hub.config import Settings
from hub.crypto.freshness import epoch_nonce
from hub.crypto.hubkeys import HubKeys, load_hub_keys
from hub.envelope import Incoming, Outgoing
from hub.reference.identity import load_anchors
from hub.reference.manifests import ManifestError
from hub.reference.policy import PolicyError
from hub.reference.values import References
from hub.schemes import SchemeRegistry, default_schemes
from hub.server.http import HealthView, serve_http
from hub.server.metrics import HubMetrics
from hub.server.observe import export_anomalies, record_batch
from hub.store import Store, StoreError

log = logging.getLogger(__name__)

SHARE_GROUP = "hub"


@dataclass(slots=True)
class Health:
    broker_connected: bool = False
    database_ok: bool = True
    last_batch_at: float = 0.0
    processed: int = 0
    last_error: str = ""

    @property
    def ready(self) -> bool:
        return self.broker_connected and self.database_ok


class HubWorker:
    def __init__(self, settings: Settings, index: int = 0, *, keys: HubKeys | None = None,
                 enforcer: BrokerEnforcer | None = None) -> None:
        self.settings = settings
        self.index = index
        self.keys = keys or load_hub_keys(settings)
        self.store = Store(settings.effective_database_url, max_pages=settings.sqlite_max_pages)
        self.references = References(self.keys.operator_keys)
        with self.store.reading() as conn:
            problems = self.references.load(self.store.latest_manifests(conn), self.store.latest_policies(conn))
        for problem in problems:
            log.warning(problem)
        self.registry = SchemeRegistry(default_schemes())
        self.pipeline = Pipeline(
            self.store, self.registry, self.keys, self.references,
            rate_limiter=RateLimiter(settings.device_rate_per_s, settings.device_burst),
            command_ttl_s=settings.command_ttl_s,
            ca_certificates=load_anchors(settings.manufacturer_cas),
            epoch_period_s=settings.epoch_period_s,
        )
        leaves = sorted(self.registry.topic_leaves)
        subscriptions = [(f"$share/{SHARE_GROUP}/{wire.FLEET_ROOT}/+/{leaf}", 1) for leaf in leaves]
        subscriptions.append((f"{wire.MANIFEST_TOPIC_PREFIX}/+", 1))
        subscriptions.append((f"{wire.POLICY_TOPIC_PREFIX}/+", 1))
        self.transport = MqttTransport(
            BrokerAddress(
                settings.broker_host, settings.broker_port, f"{settings.hub_id}-w{index}",
                settings.session_expiry_s, receive_maximum=max(64, settings.batch_max * 4),
                tls_ca=settings.broker_tls_ca, tls_cert=settings.broker_tls_cert, tls_key=settings.broker_tls_key,
            ),
            subscriptions,
        )
        self.pipeline.decider.remediation = settings.remediation
        self.enforcer = enforcer if enforcer is not None else enforcer_from_settings(settings)
        self._enforcement_synced = False  # sync the broker with the database at start and after a failure
        self.health = Health()
        self.metrics = HubMetrics(f"w{index}")
        self.view = HealthView()
        self._next_epoch_at = 0.0
        self.watch = AnomalyWatch(self.store, self.keys, self.references, detector_config(settings),
                                  command_ttl_s=settings.command_ttl_s)
        self._next_watch_at = 0.0
        self._stop = threading.Event()  # replaced by run()'s: a retry loop must not outlive a stop

    @property
    def is_leader(self) -> bool:
        return self.index == 0

    def run(self, stop: threading.Event) -> None:
        stop_http = None
        if self.settings.metrics_port:
            stop_http = serve_http(self.settings.metrics_host, self.settings.metrics_port + self.index,
                                   self.metrics.registry, self.view, self.settings, self.keys)
        self._stop = stop
        self.transport.start()
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.transport.stop()
            self.store.close()
            if stop_http is not None:
                stop_http()

    def step(self) -> None:
        """One turn of the loop: epoch upkeep, then one batch (if any arrived)."""
        self.health.broker_connected = self.transport.connected.is_set()
        self.view.last_tick = time.monotonic()
        self.view.broker_connected = self.health.broker_connected
        self.view.database_ok = self.health.database_ok
        self.view.last_error = self.health.last_error
        self.metrics.broker_connected.set(1 if self.health.broker_connected else 0)
        self.metrics.database_ok.set(1 if self.health.database_ok else 0)
        self.metrics.queue_depth.set(self.transport.inbox.qsize())
        if self.is_leader:
            self._keep_epoch()
            self._keep_watch()
        if not self._enforcement_synced:
            self._sync_enforcement()
        batch = self.transport.next_batch(self.settings.batch_max, self.settings.batch_wait_ms / 1000.0)
        if not batch:
            return
        control = [m for m in batch if m.topic.startswith(wire.HUB_ROOT + "/")]
        evidence = [m for m in batch if not m.topic.startswith(wire.HUB_ROOT + "/")]
        for message in control:
            self._on_announcement(message)
        self.transport.ack(control)
        if evidence:
            self._process_until_committed(evidence)

    def _process_until_committed(self, batch: list[Incoming]) -> BatchOutcome | None:
        """Process and commit ``batch``, retrying while the database cannot commit; None if stopped
        meanwhile (nothing of the batch acknowledged: the broker redelivers it to this identity)."""
        delay = 0.1
        while True:
            started = time.monotonic()
            try:
                outcome = self.pipeline.process(batch)
            except StoreError as exc:
                self.health.database_ok = False
                self.health.last_error = str(exc)
                self.view.database_ok, self.view.last_error = False, str(exc)  # not ready, still alive
                self.view.last_tick = time.monotonic()
                self.metrics.database_ok.set(0)
                log.error("cannot commit a batch of %d; not acknowledging, retrying in %.1fs: %s",
                          len(batch), delay, exc)
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, 5.0)
                continue
            self.health.database_ok = True
            commit_s = time.monotonic() - started
            break
        for topic, why in outcome.dropped:
            log.warning("dropped message on %s: %s", topic, why)
        for decision in outcome.decisions:
            log.info("verdict %s %s", decision.status, decision.action,
                     extra={"device_id": decision.device_id, "scheme": decision.scheme, "verdict": decision.status,
                            "trace_id": decision.trace_id, "problems": list(decision.problems)})
        self._enforce(outcome)  # the broker cuts off (or readmits) before the commands go out
        if self.transport.publish_all(outcome.publishes):
            self.transport.ack(batch)
            record_batch(self.metrics, batch, outcome, commit_s, self.pipeline.device_classes)
        else:
            # Not acknowledged: the broker redelivers; the duplicate path re-publishes without a second verdict.
            log.error("results of a batch were not acknowledged by the broker; leaving the batch unacknowledged")
        self.health.processed += len(batch)
        self.health.last_batch_at = time.time()
        return outcome

    def _enforce(self, outcome: BatchOutcome) -> None:
        """Committed quarantines and releases, applied at the broker (hub/broker/enforcement.py)."""
        for decision in outcome.decisions:
            try:
                if decision.action == "quarantine":
                    self.enforcer.quarantine(decision.device_id)
                elif decision.action == "release":
                    self.enforcer.release(decision.device_id)
                else:
                    continue
            except EnforcementError as exc:
                self._enforcement_synced = False  # retried as a full sync from the database
                self.health.last_error = str(exc)
                log.error("broker enforcement failed: %s", exc, extra={"device_id": decision.device_id})
                continue
            log.info("broker enforcement: %s", decision.action, extra={"device_id": decision.device_id})

    def _sync_enforcement(self) -> None:
        try:
            with self.store.reading() as conn:
                quarantined = self.store.device_ids_with_status(conn, QUARANTINED)
                quarantined += self.store.device_ids_with_status(conn, REVOKED)
            self.enforcer.sync(quarantined)
        except (StoreError, EnforcementError) as exc:
            self.health.last_error = str(exc)
            log.error("cannot sync broker enforcement (retrying): %s", exc)
            return
        self._enforcement_synced = True

    def _on_announcement(self, message: Incoming) -> None:
        if message.topic.startswith(wire.POLICY_TOPIC_PREFIX + "/") and message.payload:
            self._on_policy(message)
            return
        if not message.topic.startswith(wire.MANIFEST_TOPIC_PREFIX + "/") or not message.payload:
            return
        try:
            manifest = self.references.offer_manifest(message.payload)
        except ManifestError as exc:
            log.warning("manifest announcement on %s refused: %s", message.topic, exc)
            return
        if manifest is not None:
            try:
                with self.store.transaction() as conn:
                    self.store.save_manifest(conn, manifest.device_class, manifest.sequence, manifest.signer,
                                             manifest.signed)
            except StoreError as exc:
                log.error("could not store announced manifest: %s", exc)

    def _on_policy(self, message: Incoming) -> None:
        """A policy published by ``attest-hub policy publish``: signed by the hub key, adopted if newer."""
        try:
            source = read_policy_announcement(message.payload, self.keys)
            policy = self.references.offer_policy(source)
        except (OperationError, PolicyError) as exc:
            log.warning("policy announcement on %s refused: %s", message.topic, exc)
            return
        if policy is not None:
            log.info("policy %s adopted", policy.ref)
            try:
                with self.store.transaction() as conn:
                    self.store.save_policy(conn, policy.device_class, policy.version, source)
            except StoreError as exc:
                log.error("could not store announced policy: %s", exc)

    def _keep_epoch(self) -> None:
        now = time.monotonic()
        if now < self._next_epoch_at:
            return
        try:
            epoch = advance_epoch(self.store, first=self._next_epoch_at == 0.0)
        except StoreError as exc:
            self.health.database_ok = False
            log.error("cannot advance the epoch: %s", exc)
            return
        self.publish_epoch(epoch)
        self._next_epoch_at = now + self.settings.epoch_period_s
        try:
            missed = sweep_missed(self.store, self.keys, self.references, epoch, self.settings.command_ttl_s)
        except StoreError as exc:
            log.error("cannot sweep attestation deadlines: %s", exc)
            return
        if missed:
            log.warning("%d device(s) missed their attestation deadline and were quarantined", len(missed))
            self.transport.publish_all(missed)

    def _keep_watch(self) -> None:
        """Leader: the anomaly pass (hub/anomaly/watch.py) and the devices-by-status gauge, each period."""
        now = time.monotonic()
        if now < self._next_watch_at:
            return
        period = self.settings.anomaly_interval_s
        self._next_watch_at = now + (period or 30.0)
        try:
            result = self.watch.run_pass() if period else fleet_counts(self.store)
        except StoreError as exc:
            log.error("anomaly pass failed (retried next period): %s", exc)
            return
        export_anomalies(self.metrics, result)
        for device_id in result.quarantined:
            try:
                self.enforcer.quarantine(device_id)
            except EnforcementError as exc:
                self._enforcement_synced = False
                log.error("broker enforcement failed: %s", exc, extra={"device_id": device_id})
        if result.publishes and not self.transport.publish_all(list(result.publishes)):
            log.error("anomaly quarantine commands were not acknowledged by the broker")

    def publish_epoch(self, epoch: int) -> None:
        nonce = epoch_nonce(self.keys.nonce_secret, epoch)
        signed = epoch_message(epoch, nonce, int(time.time()), self.keys.signing_key, self.keys.kid)
        self.transport.publish_all([Outgoing(wire.EPOCH_TOPIC, signed, retain=True)])


def advance_epoch(store: Store, *, first: bool) -> int:
    """Advance the stored epoch (or, at start, adopt it, creating epoch 1)."""
    with store.transaction() as conn:
        current = store.get_state(conn, "epoch")
        epoch = int(current) if current is not None else 0
        if not first or epoch == 0:
            epoch += 1
            store.set_state(conn, "epoch", str(epoch))
    return epoch
