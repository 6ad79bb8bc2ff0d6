"""``attest-hub serve``: one worker's event loop.

Receive a batch, hand evidence to the pipeline, publish what it returns,
wait for the broker's PUBACKs, and only then acknowledge the batch. When the
database cannot commit, the batch is retried with backoff and nothing is
acknowledged, so the broker keeps the messages (the hub "stops acknowledging
while it cannot commit"). Worker 0 also advances the epoch nonce.

Pacing: a batch is cut to what the worker processes in ``batch_budget_ms``
(its size follows the measured cost per evidence). Quarantine commands and
their results are published first. While a committed batch waits for its
PUBACKs, the next one is processed (at most ``batches_in_flight`` wait);
batches are acknowledged in order, each only once all its messages are with
the broker. A committed batch is never decided again: its messages stay with
paho (re-sent on a resumed session) however long the broker takes, and
evidence the broker redelivers after the hub committed it is acknowledged
without a second decision.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from hub import wire
from hub.anomaly.watch import AnomalyWatch, PassResult, detector_config, fleet_counts
from hub.appraisal.liveness import sweep_missed
from hub.appraisal.messages import epoch_message
from hub.appraisal.operations import OperationError, read_policy_announcement
from hub.appraisal.pipeline import BatchOutcome, Pipeline, Prepared, Urgent
from hub.appraisal.ratelimit import RateLimiter
from hub.appraisal.retention import RetentionError, prune
from hub.appraisal.storage import RejectionTally, StorageRules
from hub.appraisal.transitions import QUARANTINED, REVOKED
from hub.appraisal.verdicts import UNKNOWN_DEVICE, Decision
from hub.broker.enforcement import BrokerEnforcer, EnforcementError, enforcer_from_settings
from hub.broker.transport import BrokerAddress, MqttTransport
from hub.config import Settings
from hub.crypto.freshness import epoch_nonce
from hub.crypto.hubkeys import HubKeys, load_hub_keys
from hub.crypto.hubstate import open_store, step_generation
from hub.envelope import Incoming, Outgoing
from hub.reference.identity import load_anchors
from hub.reference.manifests import ManifestError
from hub.reference.policy import PolicyError
from hub.reference.values import References
from hub.schemes import SchemeRegistry, default_schemes
from hub.server.announced import generation_message
from hub.server.http import HealthView, serve_http
from hub.server.metrics import HubMetrics
from hub.server.observe import export_anomalies, record_batch
from hub.server.osthread import name_thread
from hub.server.passes import ProcessPasses, ThreadPasses
from hub.server.retained import TOPICS as RETAINED_TOPICS
from hub.server.retained import RetainedGuard
from hub.server.unknown import UnknownDeviceLog, dropped_log
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


@dataclass(slots=True)
class _InFlight:
    """A committed batch whose results and commands wait for the broker's PUBACKs."""

    batch: list[Incoming]
    outcome: BatchOutcome
    infos: list[mqtt.MQTTMessageInfo]
    commit_s: float
    classes: dict[str, str]  # device id -> class, for the metrics' labels
    since: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _Early:
    """The part of a batch committed ahead of the rest (its quarantines), already enforced and published."""

    decisions: list[Decision] = field(default_factory=list)
    messages: set[int] = field(default_factory=set)  # id() of the batch's messages committed ahead
    infos: list[mqtt.MQTTMessageInfo] = field(default_factory=list)

    def callback(self, worker: HubWorker) -> Urgent:
        def urgent(decisions: list[Decision], messages: list[Incoming]) -> None:
            worker._enforce_decisions(decisions)  # the broker cuts off before the commands go out
            self.infos += worker.transport.publish(urgent_first(BatchOutcome(decisions, [
                out for d in decisions for out in d.publishes])))
            self.decisions += decisions
            self.messages.update(id(m) for m in messages)
        return urgent


def urgent_first(outcome: BatchOutcome) -> list[Outgoing]:
    """The batch's messages with the quarantines' (command and result) first, then the rest in order."""
    urgent = [out for d in outcome.decisions if d.action == "quarantine" for out in d.publishes]
    if not urgent:
        return outcome.publishes
    first = {id(out) for out in urgent}
    return urgent + [out for out in outcome.publishes if id(out) not in first]


class HubWorker:
    def __init__(self, settings: Settings, index: int = 0, *, keys: HubKeys | None = None,
                 enforcer: BrokerEnforcer | None = None) -> None:
        self.settings = settings
        self.index = index
        self.keys = keys or load_hub_keys(settings)
        self.store = open_store(settings, max_pages=settings.sqlite_max_pages)  # refuses a restored database
        self.references = References(self.keys.operator_keys)
        with self.store.reading() as conn:
            problems = self.references.load(self.store.latest_manifests(conn), self.store.latest_policies(conn))
        for problem in problems:
            log.warning(problem)
        self.registry = SchemeRegistry(default_schemes())
        self.pipeline = Pipeline(
            self.store, self.registry, self.keys, self.references,
            rate_limiter=RateLimiter(settings.device_rate_per_s, settings.device_burst,
                                     settings.rate_limit_devices_max),
            command_ttl_s=settings.command_ttl_s,
            ca_certificates=load_anchors(settings.manufacturer_cas),
            epoch_period_s=settings.epoch_period_s,
            anchor_cache_max=settings.anchor_cache_max, key_cache_max=settings.key_cache_max,
            replay_window=settings.replay_window,
        )
        leaves = sorted(self.registry.topic_leaves)
        subscriptions = [(f"$share/{SHARE_GROUP}/{wire.FLEET_ROOT}/+/{leaf}", 1) for leaf in leaves]
        subscriptions.append((f"{wire.MANIFEST_TOPIC_PREFIX}/+", 1))
        subscriptions.append((f"{wire.POLICY_TOPIC_PREFIX}/+", 1))
        if self.is_leader:  # its retained announcements, to put them back if replaced (hub/server/retained.py)
            subscriptions += [(topic, 1) for topic in RETAINED_TOPICS]
        self.transport = MqttTransport(
            BrokerAddress(
                settings.broker_host, settings.broker_port, f"{settings.hub_id}-w{index}",
                settings.session_expiry_s,
                # room for the batches waiting for PUBACKs, the one being processed and the next
                receive_maximum=min(65535, max(64, settings.batch_max * (settings.batches_in_flight + 2))),
                tls_ca=settings.broker_tls_ca, tls_cert=settings.worker_tls(index)[0],
                tls_key=settings.worker_tls(index)[1],
            ),
            subscriptions,
            on_network_thread=lambda: name_thread(f"mqtt-{self.transport.address.client_id}"),  # top -H, the bench
        )
        self.pipeline.decider.remediation = settings.remediation
        # Its own audit chain, named by its client id (unique across machines): no audit head shared with
        # the other workers (hub/audit.py).
        self.pipeline.decider.audit_chain = self.transport.address.client_id
        self.pipeline.decider.storage = StorageRules(settings.max_evidence_bytes, settings.rejected_rows_per_min,
                                                     settings.rejected_bytes_per_min)
        self.pipeline.decider.rejections = RejectionTally(settings.rejected_rows_per_min,
                                                          settings.rejected_bytes_per_min)
        self.unknown = UnknownDeviceLog(settings.sampled_log_interval_s)
        self.dropped = dropped_log(settings.sampled_log_interval_s)
        self.enforcer = enforcer if enforcer is not None else enforcer_from_settings(settings, self.transport)
        self._enforcement_synced = False  # sync the broker with the database at start and after a failure
        self.health = Health()
        self.metrics = HubMetrics(f"w{index}")
        self.guard = RetainedGuard(self.keys.public_key)
        self.view = HealthView()
        self.view.no_operator_keys = not settings.operator_keys
        self._next_epoch_at = 0.0
        self._next_generation_at = 0.0
        self.watch = AnomalyWatch(self.store, self.keys, self.references, detector_config(settings),
                                  command_ttl_s=settings.command_ttl_s)
        self._next_watch_at = 0.0
        self._next_prune_at = 0.0
        self.passes: ProcessPasses | ThreadPasses = (
            ProcessPasses(settings, f"anomaly-w{index}") if settings.anomaly_process
            else ThreadPasses(self._run_pass, f"anomaly-w{index}"))
        self._stop = threading.Event()  # replaced by run()'s: a retry loop must not outlive a stop
        self._in_flight: deque[_InFlight] = deque()
        self._committer = ThreadPoolExecutor(1, thread_name_prefix=f"commit-w{index}", initializer=name_thread,
                                             initargs=(f"commit-w{index}",))
        self._committing: Future[BatchOutcome | None] | None = None
        """The batch being decided and committed on the commit thread while the next is verified."""
        self._committed: OrderedDict[bytes, None] = OrderedDict()
        """Digests of evidence this worker committed lately (bounded): a broker redelivery of one is acknowledged
        without a second decision."""
        self._committed_max = 4 * self.transport.address.receive_maximum
        self._per_evidence_s = 0.0005  # measured cost per evidence (moving average), sets the batch size
        self.redelivered = 0
        """Evidence the broker redelivered after this worker had committed it (acknowledged, not re-decided)."""

    @property
    def is_leader(self) -> bool:
        return self.index == 0 and self.settings.leader

    def run(self, stop: threading.Event) -> None:
        stop_http = None
        if self.settings.metrics_port:
            stop_http = serve_http(self.settings.metrics_host, self.settings.metrics_port + self.index,
                                   self.metrics.registry, self.view, self.settings, self.keys)
        self._stop = stop
        self.transport.start()
        record_identity(self.store, self.index)
        try:
            while not stop.is_set():
                self.step()
        finally:
            self._finish_commit()
            self._committer.shutdown()
            self._settle(until=time.monotonic() + 5.0)  # what is still unacknowledged is redelivered to this identity
            self.passes.close()
            if self.is_leader:
                self._step_generation(wait=True)  # a clean stop: a copy taken before it is behind from now on
            self.transport.stop()
            self.store.close()
            if stop_http is not None:
                stop_http()

    def drain(self, stop: threading.Event, *, quiet_s: float = 2.0, limit_s: float = 300.0) -> int:
        """Retire this worker's identity (``serve`` with fewer workers than before): resume its persistent
        session unsubscribed, so the broker adds nothing new to it (MQTT 5 §3.10.4), decide and acknowledge
        what the session holds, like any batch, until nothing has come for ``quiet_s``; then end the session.
        Returns the evidence processed."""
        self._stop = stop
        self.transport.start(resume_only=True)  # unsubscribed: the live traffic goes to the workers
        started = last = time.monotonic()
        try:
            while not stop.is_set() and time.monotonic() - started < limit_s:
                before = self.health.processed + self.redelivered
                self.step()
                if self.health.processed + self.redelivered != before or self._in_flight or self._committing:
                    last = time.monotonic()
                elif time.monotonic() - last >= quiet_s:
                    break
            self._finish_commit()
            self._settle(until=time.monotonic() + 10.0)
            if not self._in_flight and not stop.is_set():
                self.transport.end_session()
                log.info("retired worker identity drained: %d evidence; session ended", self.health.processed,
                         extra={"client_id": self.transport.address.client_id})
                return self.health.processed
        except BaseException:
            self.transport.stop()
            raise
        finally:
            self.store.close()
        self.transport.stop()  # stopped or not settled: the session keeps the rest for the next start
        return self.health.processed

    def step(self) -> None:
        """One turn of the loop: upkeep, then one batch (if any arrived).

        When more evidence is already waiting behind a batch, the batch is decided and committed on the
        worker's commit thread while the next turn routes and verifies the next one (``Pipeline.prepare``):
        the commit's waits for the database (most of it on PostgreSQL) overlap that work. Upkeep, control
        messages and redelivered evidence wait for the commit under way, so they see its state; with nothing
        waiting, the turn ends only when its batch is committed."""
        if self._committing is None:
            self._upkeep()
        batch = self.transport.next_batch(self.batch_limit(self.transport.inbox.qsize()),
                                          self.settings.batch_wait_ms / 1000.0,
                                          idle_s=0.0 if self._committing else 0.02 if self._in_flight else 0.2)
        if not batch:
            self._finish_commit()
            return
        control = [m for m in batch if m.topic.startswith(wire.HUB_ROOT + "/")]
        if control or any(m.redelivered for m in batch) or self._committing is None:
            self._finish_commit()
            self._take(batch, control)
            return
        prepared = self.pipeline.prepare(batch)  # while the batch before commits
        self._finish_commit()
        self._upkeep()
        self._commit_prepared(batch, prepared)

    def _commit_prepared(self, evidence: list[Incoming], prepared: Prepared) -> None:
        if self.transport.inbox.qsize() == 0:  # nothing to overlap with: commit now
            self._process_until_committed(evidence, prepared)
        else:
            self._committing = self._committer.submit(self._process_until_committed, evidence, prepared)

    def _finish_commit(self) -> None:
        """Wait for the batch under way on the commit thread (its exceptions are raised here)."""
        if self._committing is not None:
            committing, self._committing = self._committing, None
            committing.result()

    def _upkeep(self) -> None:
        """Health, metrics, the leader's periodic duties, broker enforcement sync, acknowledgements."""
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
            if self.settings.generation_period_s and time.monotonic() >= self._next_generation_at:
                self._step_generation()  # bounds what a backup restored after a crash can go unnoticed
            self._keep_watch()
            self._keep_retention()
            replaced = self.guard.due(time.monotonic())
            if replaced:
                self.transport.publish(replaced)
        if not self._enforcement_synced:
            self._sync_enforcement()
        self._settle()

    def _take(self, batch: list[Incoming], control: list[Incoming]) -> None:
        """A batch with nothing under way on the commit thread: control messages, redeliveries, evidence."""
        evidence = [m for m in batch if not m.topic.startswith(wire.HUB_ROOT + "/")]
        for message in control:
            self._on_announcement(message)
        self.transport.ack(control)
        again = [m for m in evidence if m.redelivered and _digest(m) in self._committed]
        if again:  # committed before: its results are with the broker or still with paho
            self.redelivered += len(again)
            log.info("%d redelivered evidence already committed: acknowledged, not decided again", len(again))
            # A resumed session redelivers with the original packet id (MQTT 5 §4.4): while the original's
            # batch waits for its PUBACKs, its acknowledgement covers the copy; acknowledging the copy now
            # would free the id for a new message that the original's later acknowledgement would then cover.
            waiting = {m.token for flight in self._in_flight for m in flight.batch}
            self.transport.ack([m for m in again if m.token not in waiting])
            evidence = [m for m in evidence if not (m.redelivered and _digest(m) in self._committed)]
        if evidence:
            self._commit_prepared(evidence, self.pipeline.prepare(evidence))

    def batch_limit(self, backlog: int = 0) -> int:
        """Evidence per batch: what takes about ``batch_budget_ms`` at the measured cost, within [8, batch_max];
        ``batch_max`` when more than that is already waiting (``backlog``): then the evidence at the back
        waits for every batch before it, and fewer, larger batches (fewer commits) get it through sooner."""
        fits = int(self.settings.batch_budget_ms / 1000.0 / max(self._per_evidence_s, 1e-6))
        limit = max(min(8, self.settings.batch_max), min(self.settings.batch_max, fits))
        return self.settings.batch_max if backlog > limit else limit

    def _settle(self, *, until: float | None = None) -> None:
        """Acknowledge, in order, the committed batches whose messages all have their PUBACKs. Blocks while
        ``batches_in_flight`` are waiting (or until ``until``); never gives a batch up: a late broker is
        logged (after a wait that grows with what the batch publishes) and waited for."""
        while self._in_flight:
            head = self._in_flight[0]
            if not self.transport.published(head.infos):
                must_wait = until is not None or len(self._in_flight) > self.settings.batches_in_flight
                if not must_wait:
                    return
                patience = self.settings.ack_wait_s + self.settings.ack_wait_per_message_ms / 1000.0 * len(head.infos)
                limit = patience if until is None else min(patience, max(0.0, until - time.monotonic()))
                if not self.transport.wait_published(head.infos, limit):
                    if until is not None and time.monotonic() >= until:
                        log.warning("stopping with %d committed batch(es) not acknowledged by the broker: "
                                    "they are redelivered to this worker's session", len(self._in_flight))
                        return
                    log.error("the broker has not acknowledged %d result(s) of a committed batch after %.0f s; "
                              "still waiting (the batch is not processed again)", len(head.infos),
                              time.monotonic() - head.since)
                    if self._stop.is_set():
                        return
                    continue
            self._in_flight.popleft()
            self.transport.ack(head.batch)
            record_batch(self.metrics, head.batch, head.outcome, head.commit_s, head.classes)

    def _process_until_committed(self, batch: list[Incoming], prepared: Prepared | None = None) -> BatchOutcome | None:
        """Process and commit ``batch``, retrying while the database cannot commit; None if stopped
        meanwhile (nothing of the batch acknowledged: the broker redelivers it to this identity).

        Quarantines are committed in a transaction of their own ahead of the rest of their batch and
        published at once (``_urgent``); a retry after that leaves their messages out, so they are decided
        once, and the batch is acknowledged as a whole after everything is committed and published."""
        delay = 0.1
        early = _Early()
        while True:
            started = time.monotonic()
            todo = [m for m in batch if id(m) not in early.messages]
            try:
                if prepared is not None:  # the first try; a retry verifies again
                    outcome = self.pipeline.complete(prepared, early.callback(self))
                else:
                    outcome = self.pipeline.process(todo, early.callback(self))
            except StoreError as exc:
                prepared = None
                self.health.database_ok = False
                self.health.last_error = str(exc)
                self.view.database_ok, self.view.last_error = False, str(exc)  # not ready, still alive
                self.view.last_tick = time.monotonic()
                self.metrics.database_ok.set(0)
                log.error("cannot commit a batch of %d; not acknowledging, retrying in %.1fs: %s",
                          len(todo), delay, exc)
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, 5.0)
                continue
            self.health.database_ok = True
            commit_s = time.monotonic() - started
            self._per_evidence_s = 0.8 * self._per_evidence_s + 0.2 * commit_s / len(batch)
            break
        present = {id(d) for d in outcome.decisions}
        outcome.decisions[:0] = [d for d in early.decisions if id(d) not in present]  # a retry left them out
        self.dropped.add((f"{topic}: {why}" for topic, why in outcome.dropped), time.monotonic())  # not per message
        self.unknown.note(outcome.decisions, time.monotonic())  # one line per interval, not per message
        log.debug("batch of %d committed in %.1f ms", len(batch), commit_s * 1000)
        for decision in outcome.decisions:
            if decision.reason == UNKNOWN_DEVICE:
                continue
            log.info("verdict %s %s", decision.status, decision.action,
                     extra={"device_id": decision.device_id, "scheme": decision.scheme, "verdict": decision.status,
                            "action": decision.action, "trace_id": decision.trace_id,
                            "problems": list(decision.problems)})
        done = {id(d) for d in early.decisions}
        self._enforce_decisions([d for d in outcome.decisions if id(d) not in done])  # before the commands go out
        for message in batch:
            self._committed[_digest(message)] = None
        while len(self._committed) > self._committed_max:
            self._committed.popitem(last=False)
        sent = {id(out) for d in early.decisions for out in d.publishes}
        rest = [out for out in urgent_first(outcome) if id(out) not in sent]
        self._in_flight.append(_InFlight(batch, outcome, early.infos + self.transport.publish(rest),
                                         commit_s, self.pipeline.device_classes))
        self._settle()
        self.health.processed += len(batch)
        self.health.last_batch_at = time.time()
        return outcome

    def _enforce(self, outcome: BatchOutcome) -> None:
        """Committed quarantines and releases, applied at the broker (hub/broker/enforcement.py)."""
        self._enforce_decisions(outcome.decisions)

    def _enforce_decisions(self, decisions: list[Decision]) -> None:
        for decision in decisions:
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
                revoked = self.store.device_ids_with_status(conn, REVOKED)
            self.enforcer.sync(quarantined, revoked)
        except (StoreError, EnforcementError) as exc:
            self.health.last_error = str(exc)
            log.error("cannot sync broker enforcement (retrying): %s", exc)
            return
        self._enforcement_synced = True

    def _on_announcement(self, message: Incoming) -> None:
        if message.topic in RETAINED_TOPICS:
            if self.guard.observe(message.topic, message.payload, message.received_at):
                self.metrics.retained_replaced.labels(topic=message.topic).inc()
                log.warning("the retained announcement on %s was replaced by one this hub did not publish (another "
                            "key, malformed, empty or older): publishing it again; only the hub may write hub/# "
                            "(broker_config/README.md)", message.topic)
            return
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
        self._step_generation()
        try:
            missed = sweep_missed(self.store, self.keys, self.references, epoch, self.settings.command_ttl_s)
        except StoreError as exc:
            log.error("cannot sweep attestation deadlines: %s", exc)
            return
        if missed:
            log.warning("%d device(s) missed their attestation deadline and were quarantined", len(missed))
            self.transport.publish_all(missed)

    def _step_generation(self, *, wait: bool = False) -> None:
        """Leader: step the generation a restored database is detected by (hub/crypto/hubstate.py), then
        publish it signed and retained on ``hub/generation`` (hub/server/announced.py); ``wait`` for the
        broker's PUBACK (at a clean stop)."""
        self._next_generation_at = time.monotonic() + self.settings.generation_period_s
        try:
            record = step_generation(self.settings, self.store)
        except (StoreError, OSError) as exc:
            log.error("cannot step the generation (retried next period): %s", exc)
            return
        signed = generation_message(record.generation, record.epoch, int(time.time()), self.keys.signing_key,
                                    self.keys.kid)
        infos = self.transport.publish([Outgoing(wire.GENERATION_TOPIC, signed, retain=True)])
        self.guard.published(wire.GENERATION_TOPIC, signed, record.generation, time.monotonic())
        if wait and not self.transport.wait_published(infos, 5.0):
            log.warning("the broker did not acknowledge generation %d's checkpoint", record.generation)

    def _keep_watch(self) -> None:
        """Leader: the anomaly pass (hub/anomaly/watch.py) and the devices-by-status gauge, each period, in a
        process of its own (hub/server/passes.py): the evidence loop does not wait for a pass; it applies a
        finished pass's result (metrics, broker enforcement, commands) between its batches."""
        for result in self.passes.finished():
            self._apply_watch(result)
        now = time.monotonic()
        if now < self._next_watch_at or self.passes.busy:
            return
        self._next_watch_at = now + (self.settings.anomaly_interval_s or 30.0)
        self.passes.start()

    def _run_pass(self) -> PassResult:
        return self.watch.run_pass() if self.settings.anomaly_interval_s else fleet_counts(self.store)

    def _apply_watch(self, result: PassResult) -> None:
        export_anomalies(self.metrics, result)
        for device_id in result.quarantined:
            try:
                self.enforcer.quarantine(device_id)
            except EnforcementError as exc:
                self._enforcement_synced = False
                log.error("broker enforcement failed: %s", exc, extra={"device_id": device_id})
        if result.publishes and not self.transport.publish_all(list(result.publishes)):
            log.error("anomaly quarantine commands were not acknowledged by the broker")

    def _keep_retention(self) -> None:
        """Leader: export and prune what is older than ``retention_days`` (hub/appraisal/retention.py), a few
        short chunks per turn so that batches keep flowing; the rest on the next turns."""
        if not self.settings.retention_days:
            return
        now = time.monotonic()
        if now < self._next_prune_at:
            return
        self._next_prune_at = now + self.settings.retention_interval_s
        cutoff = time.time() - self.settings.retention_days * 86400
        try:
            result = prune(self.store, self.keys, self.settings.archive_dir, cutoff, max_chunks=4)
        except (StoreError, RetentionError) as exc:
            log.error("retention: pruning failed (retried next period): %s", exc)
            return
        if result.more:
            self._next_prune_at = now + 1.0
        if result.verdicts or result.audit or result.rejection_counts:
            log.info("retention: exported and pruned %d verdicts, %d audit entries, %d rejection counts to %s",
                     result.verdicts, result.audit, result.rejection_counts, self.settings.archive_dir)

    def publish_epoch(self, epoch: int) -> None:
        nonce = epoch_nonce(self.keys.nonce_secret, epoch)
        signed = epoch_message(epoch, nonce, int(time.time()), self.keys.signing_key, self.keys.kid)
        self.transport.publish_all([Outgoing(wire.EPOCH_TOPIC, signed, retain=True)])
        self.guard.published(wire.EPOCH_TOPIC, signed, epoch, time.monotonic())


IDENTITIES_KEY = "worker_identities"


def record_identity(store: Store, index: int) -> None:
    """Note that worker identity ``index`` has a persistent session (the high-water mark of worker
    indices), so a later start with fewer workers drains and ends the retired sessions."""
    try:
        with store.transaction() as conn:
            known = int(store.lock_state(conn, IDENTITIES_KEY, "0")[0])  # workers start together: no lost update
            if index + 1 > known:
                store.set_state(conn, IDENTITIES_KEY, str(index + 1))
    except StoreError as exc:
        log.error("cannot record worker identity %d: %s", index, exc)


def retired_identities(store: Store, count: int) -> list[int]:
    """Worker indices at or above ``count`` that held a persistent session before."""
    with store.reading() as conn:
        known = int(store.get_state(conn, IDENTITIES_KEY) or 0)
    return list(range(count, known))


def forget_identities(store: Store, count: int) -> None:
    with store.transaction() as conn:
        store.set_state(conn, IDENTITIES_KEY, str(count))


def _digest(message: Incoming) -> bytes:
    return hashlib.sha256(message.topic.encode() + b"\0" + message.payload).digest()[:16]


def advance_epoch(store: Store, *, first: bool) -> int:
    """Advance the stored epoch (or, at start, adopt it, creating epoch 1)."""
    with store.transaction() as conn:
        current = store.get_state(conn, "epoch")
        epoch = int(current) if current is not None else 0
        if not first or epoch == 0:
            epoch += 1
            store.set_state(conn, "epoch", str(epoch))
    return epoch
