"""The leader's analysis pass: new verdicts in, findings opened and closed, device status by policy.

Worker 0 (``HubWorker.is_leader``) runs ``AnomalyWatch.run_pass`` every
``anomaly_interval_s`` in a process of its own (hub/server/passes.py). A pass reads the verdicts
committed since the stored cursor (by any worker), folds them into the
per-device state it keeps in memory (hub/anomaly/fleet.py: read from the
database once), rescores the classes with something new, and in one
transaction stores the states that changed, the cursor, the findings and
what they do to devices; a pass with nothing new reads a few indexed rows
and writes nothing:

- policy ``anomaly = "warn"`` (default): a device with an open finding is
  held at ``warning`` (``Device.anomaly_hold``; the decider keeps it there
  while affirming evidence arrives) until its findings close;
- ``"ignore"``: findings are stored and exported only;
- ``"quarantine"``: a new finding quarantines the device with a hold, so an
  operator decides on its release.
Signature-failure findings never change a device: only authenticated
evidence may move one. A ``rejection-rate`` finding (rejected messages per
minute at the policy's ``rejected_per_min``, hub/anomaly/rejections.py)
follows the policy's ``rejected`` instead of ``anomaly``, and may also move a
device that never attested from ``enrolled`` to ``warning``. Signed commands
are returned for the worker to publish.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from hub import wire
from hub.anomaly.fleet import FleetState, mutable
from hub.anomaly.metadata import event_from_row
from hub.anomaly.records import (
    cursor,
    device_classes,
    findings,
    held_devices,
    insert_findings,
    known_sets,
    last_closed_by,
    max_verdict_id,
    save_stats,
    stat_rows,
    status_counts,
    update_findings,
    verdicts_after,
)
from hub.anomaly.rejections import assess_rejections
from hub.anomaly.scores import Assessment, assess
from hub.anomaly.stats import RARE, REJECTIONS, STATUS_KINDS, DetectorConfig, DeviceStats, observe
from hub.appraisal import transitions
from hub.appraisal.messages import Command
from hub.audit import AuditDraft, append
from hub.config import Settings
from hub.crypto.hubkeys import HubKeys
from hub.envelope import Outgoing
from hub.reference.policy import Policy
from hub.reference.trust import Tier
from hub.reference.values import References
from hub.store import DeviceRecord, Store
from hub.store.db import dumps
from hub.store.rejections import rejections_since

log = logging.getLogger(__name__)
ACTOR = "anomaly-detector"
_YIELD_EVERY = 32
"""Verdicts folded in (about 2 ms of CPU) between offers of the GIL to the evidence loop."""


@dataclass(frozen=True, slots=True)
class PassResult:
    processed: int
    opened: tuple[Assessment, ...] = ()
    closed: int = 0
    open_by_kind: dict[str, int] = field(default_factory=dict)
    devices_by_status: dict[str, int] = field(default_factory=dict)
    publishes: tuple[Outgoing, ...] = ()
    quarantined: tuple[str, ...] = ()
    scored: int = 0
    """Devices rescored (the members of the classes with something new)."""
    saved: int = 0
    """Device states written back."""


@dataclass(slots=True)
class _Changes:
    inserts: list[dict[str, object]] = field(default_factory=list)
    updates: list[dict[str, object]] = field(default_factory=list)
    opened: list[Assessment] = field(default_factory=list)
    audit: list[AuditDraft] = field(default_factory=list)
    closed: int = 0


class AnomalyWatch:
    def __init__(self, store: Store, keys: HubKeys, references: References, config: DetectorConfig, *,
                 command_ttl_s: int, batch_limit: int = 50_000, incremental: bool = True) -> None:
        self.store = store
        self.keys = keys
        self.references = references
        self.config = config
        self.command_ttl_s = command_ttl_s
        self.batch_limit = batch_limit
        self._seen: list[tuple[float, int]] = []  # (monotonic time, newest verdict id then)
        self.incremental = incremental
        """False: every pass reads the whole state and rescores the fleet (the reference the tests compare with)."""
        self._fleet: FleetState | None = None

    def run_pass(self, now: float | None = None, *, tick: float | None = None) -> PassResult:
        """One pass (raises StoreError when the database fails; nothing is then stored).

        ``now`` (wall clock) dates findings; ``tick`` (monotonic) decides which verdicts have settled:
        only ids already visible ``settle_s`` ago are read, so a worker's transaction that took a lower id
        and commits late is not passed over, whatever the wall clocks of the hosts do.
        """
        now = time.time() if now is None else now
        tick = time.monotonic() if tick is None else tick
        try:
            return self._pass(now, tick)
        except BaseException:
            self._fleet = None  # the memory may be ahead of the database: read it afresh next time
            raise

    def _pass(self, now: float, tick: float) -> PassResult:
        with self.store.reading() as conn:  # the heavy part runs outside the write transaction
            after = cursor(self.store, conn)
            fleet = self._fleet
            if fleet is None or fleet.cursor != after or not self.incremental:
                fleet = self._fleet = FleetState.load(conn, after)
            rows = verdicts_after(conn, after, self._horizon(tick, max_verdict_id(conn)), self.batch_limit)
            current = {(f["device_id"], f["kind"]): f for f in findings(conn, open_only=True, limit=1_000_000)}
            rejected = rejections_since(conn, int(now // 60) - 1)
            rejecting = set(rejected) | {d for d, k in current if k == REJECTIONS}
            classes = device_classes(conn, {str(r["device_id"]) for r in rows} | rejecting)
            known = known_sets(conn)
            by_status = status_counts(conn)
        dirty = set(fleet.pending)
        fleet.pending = set()
        touched: set[str] = set()
        for n, event in enumerate(event_from_row(r) for r in rows):
            if n % _YIELD_EVERY == _YIELD_EVERY - 1:
                time.sleep(0)  # let the evidence loop have the GIL (when the pass runs on a thread of the same process)
            device_class = classes.get(event.device_id)
            if device_class is None:
                continue  # not enrolled: nothing to compare it with
            device = fleet.device(event.device_id, device_class, dirty)
            observe(device, event, self.config)
            dirty.add(device_class)
            touched.add(event.device_id)
        dirty |= {c for c in set(known) | set(fleet.known) if known.get(c) != fleet.known.get(c)}
        fleet.known = known
        scored = fleet.members(dirty)
        before = {i: mutable(s) for i, s in scored.items()}
        assessments = assess(scored, now, self.config, known)
        rejections = assess_rejections(rejected, classes, self.references.policy, now, self.config.threshold,
                                       {d for d, k in current if k == REJECTIONS})
        for a in rejections:  # a device that only ever sent rejected messages may have no state yet
            if a.device_id not in fleet.stats:
                fleet.device(a.device_id, a.device_class, fleet.pending)  # its class is rescored next pass
                touched.add(a.device_id)
            if a.device_id not in before:
                before[a.device_id] = mutable(fleet.stats[a.device_id])
        assessments += rejections
        changes = self._findings(fleet.stats, assessments, current, self._closed_by(fleet, assessments, current),
                                 now)
        touched |= {i for i, old in before.items() if mutable(fleet.stats[i]) != old}
        state_rows = stat_rows((fleet.stats[i] for i in sorted(touched)), now)
        policies = tuple(sorted({(str(f["device_class"]), repr(self.references.policy(str(f["device_class"]))))
                                 for f in current.values()}))
        inputs = (frozenset(current), policies, tuple(sorted(by_status.items())))
        decide = bool(changes.opened or changes.closed or inputs != fleet.devices_inputs or not self.incremental)
        if not (rows or decide or changes.updates or state_rows):  # nothing new: nothing to write
            by_kind = Counter(str(k) for _, k in current)
            return PassResult(0, open_by_kind=dict(by_kind), devices_by_status=by_status,
                              scored=len(scored))
        publishes: list[Outgoing] = []
        quarantined: list[str] = []
        with self.store.transaction() as conn:
            if cursor(self.store, conn) != after:
                log.warning("another anomaly pass moved the cursor; skipping this one")
                self._fleet = None
                return PassResult(0)
            insert_findings(conn, changes.inserts)
            update_findings(conn, changes.updates)
            open_now = findings(conn, open_only=True, limit=1_000_000)
            if decide:
                publishes, quarantined = self._devices(conn, open_now, changes, now)
                by_status = status_counts(conn)
            append(self.store, conn, changes.audit)
            save_stats(conn, state_rows, fleet.persisted)
            if rows:
                self.store.set_state(conn, "anomaly_cursor", str(rows[-1]["id"]))
            by_kind = Counter(str(f["kind"]) for f in open_now)
        fleet.persisted.update(touched)
        fleet.cursor = int(rows[-1]["id"]) if rows else after
        fleet.devices_inputs = (frozenset((str(f["device_id"]), str(f["kind"])) for f in open_now), policies,
                                tuple(sorted(by_status.items()))) if decide else inputs
        for opened in changes.opened:
            log.warning("anomaly: %s", opened.explanation,
                        extra={"device_id": opened.device_id, "anomaly": opened.kind, "score": opened.score})
        return PassResult(len(rows), tuple(changes.opened), changes.closed, dict(by_kind), by_status,
                          tuple(publishes), tuple(quarantined), len(scored), len(state_rows))

    def _closed_by(self, fleet: FleetState, assessments: list[Assessment],
                   current: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], str]:
        """Who closed the latest finding of each (device, kind) that may open one now and has no memory of
        being armed (read for those few devices only)."""
        wanted = {a.device_id for a in assessments
                  if a.score >= self.config.threshold and (a.device_id, a.kind) not in current
                  and a.kind not in fleet.stats[a.device_id].armed}
        if not wanted:
            return {}
        with self.store.reading() as conn:
            return last_closed_by(conn, wanted)

    def _horizon(self, tick: float, newest: int) -> int:
        """The newest verdict id seen at least ``settle_s`` ago (this worker's own observations)."""
        self._seen.append((tick, newest))
        settled = [i for i, (t, _) in enumerate(self._seen) if tick - t >= self.config.settle_s]
        if not settled:
            return 0
        last = settled[-1]
        horizon = self._seen[last][1]
        del self._seen[:last]
        return horizon

    def _findings(self, stats: dict[str, DeviceStats], assessments: list[Assessment],
                  current: dict[tuple[str, str], dict[str, Any]], closed_by: dict[tuple[str, str], str],
                  now: float) -> _Changes:
        threshold = self.config.threshold
        changes = _Changes()
        for a in assessments:
            device = stats[a.device_id]
            low = a.score < threshold / 2 or (a.kind == RARE and a.score < threshold)
            if low:
                device.armed[a.kind] = True
            row = current.get((a.device_id, a.kind))
            if row is not None:
                update = {"_id": row["id"], "score": a.score, "max_score": max(float(row["max_score"]), a.score),
                          "explanation": a.explanation or row["explanation"],
                          "detail": dumps(a.detail) if a.detail else row["detail"], "last_seen": now,
                          "is_open": True, "closed_at": None, "closed_by": None, "close_reason": None}
                if low:
                    update.update(is_open=False, closed_at=now, closed_by="detector",
                                  close_reason=f"score fell to {a.score:.2f}")
                    changes.closed += 1
                    changes.audit.append(AuditDraft(now, ACTOR, "anomaly-closed", a.device_id,
                                                    {"kind": a.kind, "finding": row["id"], "score": a.score}))
                changes.updates.append(update)
                continue
            operator_closed = closed_by.get((a.device_id, a.kind), "detector") != "detector"
            armed = device.armed.get(a.kind, not operator_closed)
            if a.score >= threshold and armed:
                device.armed[a.kind] = False
                changes.inserts.append({
                    "device_id": a.device_id, "device_class": a.device_class, "kind": a.kind, "score": a.score,
                    "max_score": a.score, "explanation": a.explanation, "detail": dumps(a.detail),
                    "first_seen": now, "last_seen": now, "is_open": True,
                })
                changes.opened.append(a)
                changes.audit.append(AuditDraft(now, ACTOR, "anomaly", a.device_id,
                                                {"kind": a.kind, "score": a.score, "explanation": a.explanation}))
        return changes

    def _devices(self, conn: Connection, open_now: list[dict[str, object]], changes: _Changes,
                 now: float) -> tuple[list[Outgoing], list[str]]:
        """Apply the class policy to devices whose holds change or that got a new finding."""
        kinds: dict[str, list[tuple[str, str]]] = {}  # device -> (kind, explanation) of its open findings
        for f in open_now:
            if f["kind"] in STATUS_KINDS:
                kinds.setdefault(str(f["device_id"]), []).append((str(f["kind"]), str(f["explanation"])))
        fresh: dict[str, set[str]] = {}
        for a in changes.opened:
            if a.kind in STATUS_KINDS:
                fresh.setdefault(a.device_id, set()).add(a.kind)
        wanted = set(kinds) | held_devices(conn)
        devices = self.store.devices(conn, wanted, lock=True) if wanted else {}
        touched: list[DeviceRecord] = []
        publishes: list[Outgoing] = []
        quarantined: list[str] = []
        for device_id, device in devices.items():
            if device.revoked:
                continue
            policy = self.references.policy(device.device_class)
            acting = [(k, text) for k, text in kinds.get(device_id, []) if _action(policy, k) != "ignore"]
            hold = bool(acting)
            reason = "; ".join(text for _, text in acting)[:500] or "anomaly findings closed"
            quarantine = any(_action(policy, k) == "quarantine" for k in fresh.get(device_id, ()))
            old = device.status
            if hold and quarantine and device.status != transitions.QUARANTINED:
                trace_id = uuid.uuid4().hex[:16]
                publishes.append(self._quarantine(conn, device, reason, now, trace_id))
                quarantined.append(device_id)
                log.warning("anomaly: quarantining %s: %s", device_id, reason,
                            extra={"device_id": device_id, "trace_id": trace_id, "verdict": "anomaly"})
            elif hold and device.status in (transitions.TRUSTED, transitions.ENROLLED):
                device.status = transitions.WARNING
            elif not hold and device.status == transitions.WARNING and device.tier == int(Tier.AFFIRMING):
                device.status = transitions.TRUSTED
            elif not hold and device.status == transitions.WARNING and device.last_verdict_at is None:
                device.status = transitions.ENROLLED  # warned for rejected messages before it ever attested
            if hold == device.anomaly_hold and old == device.status:
                continue
            device.anomaly_hold = hold
            touched.append(device)
            if old != device.status:
                changes.audit.append(AuditDraft(now, ACTOR, "status", device_id,
                                                {"from": old, "to": device.status, "reason": reason}))
        self.store.save_devices(conn, touched)
        return publishes, quarantined

    def _quarantine(self, conn: Connection, device: DeviceRecord, reason: str, now: float,
                    trace_id: str) -> Outgoing:
        """Quarantine with a hold: a behavioural finding is not undone by the next clean evidence."""
        device.status, device.quarantine_hold = transitions.QUARANTINED, True
        device.command_seq += 1
        command = Command(device.device_id, wire.COMMAND_QUARANTINE, device.command_seq, int(now),
                          int(now) + self.command_ttl_s, reason)
        signed = command.sign(self.keys.signing_key, self.keys.kid)
        self.store.insert_commands(conn, [{"device_id": device.device_id, "seq": command.seq,
                                           "kind": wire.COMMAND_QUARANTINE, "reason": reason, "issued_at": now,
                                           "expires_at": float(command.expires_at), "signed": signed}])
        return Outgoing(wire.device_topic(device.device_id, wire.COMMAND), signed, True, None, trace_id)


def _action(policy: Policy, kind: str) -> str:
    """What an open finding of ``kind`` does under ``policy``: "warn", "ignore" or "quarantine"."""
    return policy.rejected if kind == REJECTIONS else policy.anomaly


def detector_config(settings: Settings) -> DetectorConfig:
    return DetectorConfig(interval_s=settings.anomaly_interval_s, threshold=settings.anomaly_threshold,
                          settle_s=settings.anomaly_settle_s)


def fleet_counts(store: Store) -> PassResult:
    """Open findings by kind and devices by status, without a pass (detection switched off)."""
    with store.reading() as conn:
        by_kind = Counter(str(f["kind"]) for f in findings(conn, open_only=True, limit=1_000_000))
        return PassResult(0, open_by_kind=dict(by_kind), devices_by_status=status_counts(conn))
