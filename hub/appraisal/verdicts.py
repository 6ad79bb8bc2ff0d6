"""Turning checked evidence into verdict rows, device changes, commands and results.

The ``Decider`` collects the writes of one batch (verdicts, device rows,
commands, audit entries) and ``flush`` writes them with a few executemany
statements inside the pipeline's transaction. Messages to publish are
attached to each ``Decision`` and sent only after the commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Connection

from hub import wire
from hub.appraisal import antireplay, transitions
from hub.appraisal.liveness import deadline_epoch
from hub.appraisal.messages import Command, ResultClaims, result_from_verdict
from hub.appraisal.remediation import plan_remediation
from hub.appraisal.storage import RejectionTally, StorageRules, evidence_columns, kept_bytes
from hub.audit import HUB_CHAIN, AuditDraft, append
from hub.crypto.cose import Signer
from hub.crypto.hubkeys import HubKeys
from hub.envelope import Outgoing
from hub.reference import trust
from hub.reference.trust import Tier, TrustVector
from hub.reference.values import References
from hub.schemes.base import AppraisalInputs, Claims, DeviceState, EvidenceError, EvidenceScheme
from hub.store.db import DeviceRecord, Store, dumps
from hub.store.rejections import add_rejections

REJECTED = "rejected"
DUPLICATE = "duplicate"
UNKNOWN_DEVICE = "unknown-device"
LATE = "late"
"""The action of a late verdict that moved nothing (evidence below the mark, within the anti-replay window)."""


@dataclass(slots=True)
class Decision:
    device_id: str
    scheme: str
    status: str  # affirming | warning | contraindicated | rejected | duplicate
    authenticated: bool
    tier: Tier
    trust_vector: TrustVector
    problems: tuple[str, ...]
    action: str
    trace_id: str
    evidence_ref: str = ""
    reason: str = ""
    publishes: list[Outgoing] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Context:
    device_id: str
    scheme: str
    trace_id: str
    evidence: bytes
    now: float
    nonce: bytes | None = None


@dataclass(slots=True)
class PendingWrites:
    """A batch's writes set aside while another part of it commits first (``Decider.set_aside``)."""

    verdicts: list[dict[str, Any]]
    commands: list[dict[str, Any]]
    audit: list[AuditDraft]
    touched: set[str]
    results: dict[str, dict[str, Any]]
    rejections: dict[tuple[str, int], list[int]]


class Decider:
    def __init__(self, store: Store, keys: HubKeys, references: References, *, command_ttl_s: int,
                 epoch_period_s: float = 300.0, replay_window: int = antireplay.DEFAULT_WIDTH) -> None:
        self.store = store
        self.epoch = 0
        self.epoch_period_s = epoch_period_s
        self.keys = keys
        self.kid = keys.kid  # a SHA-256 of the public key: computed once, not per signature
        # Protected headers encoded once, key and algorithm objects reused: the same bytes as
        # messages.sign_result and Command.sign make (tests/test_hotpath.py compares them).
        self._result_signer = Signer(keys.signing_key, kid=self.kid, content_type=wire.EAR_MEDIA_TYPE.split(";")[0])
        self._command_signer = Signer(keys.signing_key, kid=self.kid)
        self.references = references
        self.command_ttl_s = command_ttl_s
        self.replay_window = replay_window
        """Width of each device's anti-replay window, in sequence numbers (``Settings.replay_window``)."""
        self.remediation = False  # send a remediate command when quarantining for firmware (Settings.remediation)
        self._verdicts: list[dict[str, Any]] = []
        self._commands: list[dict[str, Any]] = []
        self._audit: list[AuditDraft] = []
        self.audit_chain = HUB_CHAIN
        """The audit chain this batch's entries are appended to (a worker's own: hub/audit.py)."""
        self._touched: set[str] = set()
        self._results: dict[str, dict[str, Any]] = {}  # each device's latest retained result (HTTP API reads it)
        self._vector_texts: dict[TrustVector, str] = {}  # a vector's JSON: few distinct vectors, encoded once
        self.platform_schemes: frozenset[str] = frozenset({"firmware", "tpm", "psa"})
        """Schemes whose results are retained (set by the pipeline from its registry)."""
        # Bounded storage (hub/appraisal/storage.py): what a row keeps, how many rejections get a row.
        self.storage = StorageRules()
        self.rejections = RejectionTally(self.storage.rejected_rows_per_min)

    def context(self, device_id: str, scheme: str, trace_id: str, evidence: bytes, now: float,
                nonce: bytes | None = None) -> Context:
        return Context(device_id, scheme, trace_id, evidence, now, nonce)

    # --- outcomes -----------------------------------------------------------------

    def reject(
        self,
        conn: Connection,
        ctx: Context,
        dedup_key: str,
        error: EvidenceError,
        seen: set[tuple[str, str, str]],
        *,
        device: DeviceRecord | None = None,
    ) -> Decision:
        """Evidence that cannot move the device: unauthenticated, stale, replayed, unknown."""
        key = (ctx.device_id, ctx.scheme, dedup_key)
        if key in seen and not error.authenticated:
            return self.repeat(conn, ctx, device, dedup_key, None, platform=False)
        seen.add(key)
        vector = (
            TrustVector(instance_identity=trust.IDENTITY_UNTRUSTWORTHY)
            if error.authenticated
            else trust.crypto_failure()
        )
        problems = (f"{error.reason}: {error.detail}" if error.detail else error.reason,)
        decision = Decision(ctx.device_id, ctx.scheme, REJECTED, error.authenticated, Tier.CONTRAINDICATED, vector,
                            problems, "none", ctx.trace_id, dedup_key, error.reason)
        self.rejections.count(ctx.device_id, ctx.now, error.authenticated, len(ctx.evidence))
        device_class = device.device_class if device else "?"
        kept = kept_bytes(ctx.evidence, error.authenticated, self.storage.max_evidence_bytes)
        # Evidence that authenticated is evidence: it always keeps its row (and its bytes up to the size limit),
        # so every piece a device signed has exactly one verdict. Only what did not authenticate (anyone on the
        # network can send it) is budgeted per device and minute; beyond the budget it is only counted.
        if not error.authenticated and not self.rejections.admit(ctx.device_id, ctx.now, kept):
            return decision
        self._record(ctx, decision, None, device_class, retain=False)
        if device is not None:
            device.last_seen = ctx.now
            self._touched.add(device.device_id)
        return decision

    def unknown(self, ctx: Context) -> Decision:
        """Evidence for a device id that is not enrolled: a decision for the metrics, nothing stored or signed."""
        return Decision(ctx.device_id, ctx.scheme, REJECTED, False, Tier.CONTRAINDICATED, trust.crypto_failure(),
                        (UNKNOWN_DEVICE,), "none", ctx.trace_id, "", UNKNOWN_DEVICE)

    def misbehaving(
        self, conn: Connection, ctx: Context, device: DeviceRecord, dedup_key: str, error: EvidenceError,
        seen: set[tuple[str, str, str]], *, platform: bool = True,
    ) -> Decision:
        """Evidence the device signed but that breaks the profile: its own fault, appraised as contraindicated."""
        key = (ctx.device_id, ctx.scheme, dedup_key)
        if key in seen:
            return self.repeat(conn, ctx, device, dedup_key, None, platform=platform)
        if error.reason == "bad-nonce":  # a nonce out of range (RFC 9711 4.1) fails freshness like a forged one
            return self.reject(conn, ctx, dedup_key, error, seen, device=device)
        seen.add(key)
        vector = TrustVector(instance_identity=trust.IDENTITY_TRUSTWORTHY,
                             configuration=trust.CONFIG_CONTRAINDICATED)
        problem = f"{error.reason}: {error.detail}" if error.detail else error.reason
        return self._apply(ctx, device, vector, (problem,), None, dedup_key, {}, platform=platform)

    def duplicate(self, conn: Connection, ctx: Context, device: DeviceRecord, claims: Claims, *,
                  platform: bool = True) -> Decision:
        """Redelivered evidence: no second verdict; re-send its result and the device's state command."""
        return self.repeat(conn, ctx, device, claims.dedup_key, claims.nonce, platform=platform)

    def repeat(self, conn: Connection, ctx: Context, device: DeviceRecord | None, dedup_key: str,
               nonce: bytes | None, *, platform: bool) -> Decision:
        """One rule for every copy of evidence already judged (docs/PROTOCOL.md#duplicates): no second verdict;
        the stored result again (re-signed: the same claims, iat and nonce, byte for byte the same payload) and
        the device's latest state command. The result is retained only if it is a platform result that
        still stands (the device's newest non-rejected platform verdict): an old result never replaces the
        standing one, and data results are never retained."""
        decision = self._dup_only(ctx, dedup_key)
        stored = next((v for v in self._verdicts if (v["device_id"], v["scheme"], v["dedup_key"])
                       == (ctx.device_id, ctx.scheme, dedup_key)), None)  # judged earlier in this batch
        if stored is None:
            stored = self.store.verdict_for(conn, ctx.device_id, ctx.scheme, dedup_key)
        if stored is not None:
            # The result doubles as the device's receipt (docs/PROTOCOL.md#receipts).
            retain = platform and stored["status"] != REJECTED and self._stands(conn, stored)
            decision.publishes.append(self._result_message(result_from_verdict(stored, nonce), ctx, retain=retain))
        if device is not None:
            command = self.store.latest_state_command(conn, ctx.device_id)
            if command is not None:
                decision.publishes.append(_publish(wire.device_topic(ctx.device_id, wire.COMMAND),
                                                   bytes(command["signed"]), True, ctx.trace_id))
        return decision

    def _stands(self, conn: Connection, stored: dict[str, Any]) -> bool:
        """Is ``stored`` the device's newest non-rejected platform verdict (committed or in this batch)?"""
        device_id = stored["device_id"]
        pending = [v for v in self._verdicts if v["device_id"] == device_id and v["scheme"] in self.platform_schemes
                   and v["status"] != REJECTED and v["action"] != LATE]
        newest = pending[-1] if pending else self.store.standing_verdict(conn, device_id, self.platform_schemes)
        return newest is not None and (newest["scheme"], newest["dedup_key"]) == (stored["scheme"],
                                                                                   stored["dedup_key"])

    def appraise(
        self, conn: Connection, ctx: Context, device: DeviceRecord, scheme: EvidenceScheme, claims: Claims,
        *, late: bool = False,
    ) -> Decision:
        """Appraise authenticated, fresh evidence and apply its verdict. ``late``: its counter is below the
        device's mark, within the anti-replay window and not judged before (hub/appraisal/antireplay.py); it
        gets its verdict, its result (never retained) and its bit in the window, but moves no state back: not
        the mark, the firmware version or the scheme's state updates, and the status only to quarantine."""
        state = DeviceState(
            svn_high_water=device.svn_high_water, firmware_tier=device.tier, chain_head=device.chain_head,
            chain_bootcount=device.chain_bootcount, chain_seq=device.chain_seq,
        )
        manifest = self.references.manifest(device.device_class)
        inputs = AppraisalInputs(manifest, self.references.policy(device.device_class), state)
        appraisal = scheme.appraise(claims, inputs)
        if claims.counter is not None:
            bootcount, seq = claims.counter
            mark = (device.bootcount, device.seq)
            device.seq_window = antireplay.judged(claims.counter, mark, device.seq_window, self.replay_window)
            if not late:
                if device.bootcount >= 0 and bootcount > device.bootcount:
                    device.reboots += 1
                    self._audit.append(AuditDraft(ctx.now, "hub", "reboot", device.device_id,
                                                  {"from": device.bootcount, "to": bootcount}))
                device.bootcount, device.seq = bootcount, seq
        manifest_ref = f"{manifest.device_class}#{manifest.sequence}" if manifest else None
        if appraisal.firmware_version and claims.scheme in ("firmware", "tpm", "psa") and not late:
            device.firmware_version = appraisal.firmware_version
        decision = self._apply(ctx, device, appraisal.trust_vector, appraisal.problems, manifest_ref,
                               claims.dedup_key, {} if late else appraisal.state_updates,
                               platform=scheme.attests_platform, late=late)
        if appraisal.annotations:  # e.g. a PSA token's verification service and certification reference
            self._audit.append(AuditDraft(ctx.now, "hub", "annotations", device.device_id,
                                          {"scheme": claims.scheme, "evidence": claims.dedup_key,
                                           **appraisal.annotations}))
        if (appraisal.verified_data is not None and decision.tier in (Tier.AFFIRMING, Tier.WARNING)
                and device.status != transitions.QUARANTINED and not device.revoked):
            decision.publishes.append(_publish(wire.device_topic(device.device_id, wire.VERIFIED_DATA),
                                               appraisal.verified_data, False, ctx.trace_id))
        return decision

    # --- shared -----------------------------------------------------------------

    def _apply(
        self, ctx: Context, device: DeviceRecord, vector: TrustVector, problems: tuple[str, ...],
        manifest_ref: str | None, dedup_key: str, updates: Any, *, platform: bool = True, late: bool = False,
    ) -> Decision:
        policy = self.references.policy(device.device_class)
        tier = vector.tier()
        step = transitions.after_verdict(device.status, device.quarantine_hold, tier, policy, platform=platform)
        if device.anomaly_hold and step.status == transitions.TRUSTED:  # an open anomaly finding (hub/anomaly/watch.py)
            step = replace(step, status=transitions.WARNING, action="warn" if step.action == "affirm" else step.action)
        if late and not transitions.escalates(device.status, device.quarantine_hold, step):
            return self._late(ctx, device, vector, problems, manifest_ref, dedup_key)
        decision = Decision(ctx.device_id, ctx.scheme, tier.label, True, tier, vector, problems, step.action,
                            ctx.trace_id, dedup_key)
        old_status = device.status
        device.status, device.quarantine_hold = step.status, step.hold
        if platform:
            device.tier, device.trust_vector = int(tier), self._vector_json(vector)
            device.last_problems = _problems_json(problems)
            if device.status != transitions.QUARANTINED:
                device.next_deadline = float(deadline_epoch(self.epoch, policy, self.epoch_period_s))
        device.last_seen = device.last_verdict_at = ctx.now
        for name, value in dict(updates).items():
            if hasattr(device, name):
                setattr(device, name, value)
        if "public_key_pem" in updates:  # key rotation: evidence verified with the old key is refused from now on
            device.key_version += 1
            self._audit.append(AuditDraft(ctx.now, "hub", "key-rotated", device.device_id,
                                          {"key_version": device.key_version, "evidence": dedup_key}))
        self._touched.add(device.device_id)
        # Retained results state what the device runs; data verdicts are delivered live but do not replace it.
        self._record(ctx, decision, manifest_ref, device.device_class, retain=platform, late=late)
        reason = "; ".join(problems) if problems else f"attested {tier.label}"
        if step.command is not None:
            decision.publishes.append(self.command(device, step.command, reason, ctx.now, ctx.trace_id))
        if old_status != device.status or late:
            self._audit.append(AuditDraft(ctx.now, "hub", "status", device.device_id,
                                          {"from": old_status, "to": device.status, "action": step.action,
                                           "evidence": dedup_key, "scheme": ctx.scheme, "reason": reason,
                                           **({"late": True} if late else {})}))
        if step.command == wire.COMMAND_QUARANTINE and self.remediation and platform:
            self._remediate(ctx, device, vector, reason, dedup_key, decision)
        return decision

    def _late(self, ctx: Context, device: DeviceRecord, vector: TrustVector, problems: tuple[str, ...],
              manifest_ref: str | None, dedup_key: str) -> Decision:
        """A late verdict that does not escalate: stored and published with action ``late``, its result not
        retained (it does not state what the device runs now: newer evidence did); the device only seen."""
        tier = vector.tier()
        decision = Decision(ctx.device_id, ctx.scheme, tier.label, True, tier, vector, problems, LATE, ctx.trace_id,
                            dedup_key)
        device.last_seen = ctx.now
        self._touched.add(device.device_id)
        self._record(ctx, decision, manifest_ref, device.device_class, retain=False, late=True)
        return decision

    def _remediate(self, ctx: Context, device: DeviceRecord, vector: TrustVector, reason: str, dedup_key: str,
                   decision: Decision) -> None:
        """Quarantined for what it runs: name the newest approved release to install (hub/appraisal/remediation.py)."""
        plan = plan_remediation(vector, self.references.manifest(device.device_class),
                                self.references.policy(device.device_class), device.svn_high_water)
        if plan is None:
            return
        decision.publishes.append(self.command(device, wire.COMMAND_REMEDIATE, f"install {plan.release}: {reason}",
                                               ctx.now, ctx.trace_id, release_name=plan.release))
        self._audit.append(AuditDraft(ctx.now, "hub", "remediating", device.device_id,
                                      {"release": plan.release, "svn": plan.svn, "floor": plan.floor,
                                       "reason": reason, "evidence": dedup_key, "scheme": ctx.scheme}))

    def command(self, device: DeviceRecord, kind: str, reason: str, now: float, trace_id: str,
                release_name: str | None = None) -> Outgoing:
        """Sign a state command (retained on the device's command topic) and record it."""
        device.command_seq += 1
        self._touched.add(device.device_id)
        command = Command(device.device_id, kind, device.command_seq, int(now), int(now) + self.command_ttl_s,
                          reason[:500], release_name=release_name)
        signed = self._command_signer.sign(command.payload())
        self._commands.append({"device_id": device.device_id, "seq": command.seq, "kind": kind, "reason": reason[:500],
                               "issued_at": now, "expires_at": float(command.expires_at), "signed": signed})
        return _publish(wire.device_topic(device.device_id, wire.COMMAND), signed, True, trace_id)

    def note(self, draft: AuditDraft) -> None:
        self._audit.append(draft)

    def _record(self, ctx: Context, decision: Decision, manifest_ref: str | None, device_class: str,
                retain: bool, late: bool = False) -> None:
        policy = self.references.policy(device_class)
        self._verdicts.append({
            "device_id": ctx.device_id, "scheme": ctx.scheme, "dedup_key": decision.evidence_ref,
            "received_at": ctx.now, "authenticated": decision.authenticated, "tier": int(decision.tier),
            "status": decision.status, "trust_vector": self._vector_json(decision.trust_vector),
            "problems": _problems_json(decision.problems), "action": decision.action,
            "firmware_version": None, "manifest_ref": manifest_ref, "policy_ref": policy.ref,
            "trace_id": ctx.trace_id,
            **evidence_columns(ctx.evidence, decision.authenticated, self.storage.max_evidence_bytes),
        })
        self._audit.append(AuditDraft(ctx.now, "hub", "verdict", ctx.device_id, {
            "scheme": ctx.scheme, "evidence": decision.evidence_ref, "status": decision.status,
            "action": decision.action, "problems": list(decision.problems), "manifest": manifest_ref,
            "policy": policy.ref, **({"late": True} if late else {}),
        }))
        result = ResultClaims(ctx.device_id, ctx.scheme, decision.trust_vector, decision.tier, int(ctx.now),
                              decision.problems, decision.evidence_ref, manifest_ref, policy.ref, decision.action,
                              ctx.nonce)
        message = self._result_message(result, ctx, retain)
        decision.publishes.insert(0, message)
        if retain:
            self._results[ctx.device_id] = {"device_id": ctx.device_id, "scheme": ctx.scheme, "issued_at": ctx.now,
                                            "signed": message.payload}

    def _result_message(self, result: ResultClaims, ctx: Context, retain: bool) -> Outgoing:
        signed = self._result_signer.sign(result.payload())
        return _publish(wire.device_topic(ctx.device_id, wire.RESULT), signed, retain, ctx.trace_id,
                        content_type=wire.EAR_MEDIA_TYPE)

    def _vector_json(self, vector: TrustVector) -> str:
        text = self._vector_texts.get(vector)
        if text is None:
            if len(self._vector_texts) > 4096:
                self._vector_texts.clear()
            text = self._vector_texts[vector] = dumps(vector.to_json())
        return text

    def _dup_only(self, ctx: Context, dedup_key: str) -> Decision:
        return Decision(ctx.device_id, ctx.scheme, DUPLICATE, False, Tier.NONE, TrustVector(), (), "none",
                        ctx.trace_id, dedup_key, DUPLICATE)

    def reset(self) -> None:
        self._verdicts, self._commands, self._audit, self._touched = [], [], [], set()
        self.rejections.discard()
        self._results = {}

    def set_aside(self, keep: set[str]) -> PendingWrites:
        """Keep only the pending writes of the devices in ``keep`` (flushed next); return the others'
        (``restore`` puts them back), so that a batch's quarantines commit ahead of the rest of it."""
        aside = PendingWrites([r for r in self._verdicts if r["device_id"] not in keep],
                              [r for r in self._commands if r["device_id"] not in keep],
                              [a for a in self._audit if a.device_id not in keep], self._touched - keep,
                              {d: r for d, r in self._results.items() if d not in keep},
                              self.rejections.set_aside(keep))
        self._verdicts = [r for r in self._verdicts if r["device_id"] in keep]
        self._commands = [r for r in self._commands if r["device_id"] in keep]
        self._audit = [a for a in self._audit if a.device_id in keep]
        self._touched &= keep
        self._results = {d: r for d, r in self._results.items() if d in keep}
        return aside

    def restore(self, aside: PendingWrites) -> None:
        """The writes ``set_aside`` returned, pending again (after the part kept was flushed)."""
        self._verdicts, self._commands, self._audit = aside.verdicts, aside.commands, aside.audit
        self._touched, self._results = aside.touched, aside.results
        self.rejections.restore(aside.rejections)

    def flush(self, conn: Connection, devices: dict[str, DeviceRecord],
              before: dict[str, tuple[object, ...]] | None = None) -> None:
        """Write the batch; ``before`` (snapshots of the devices as read) narrows device updates to changes."""
        try:
            self.store.insert_verdicts(conn, self._verdicts)
            self.store.save_devices(conn, [devices[d] for d in sorted(self._touched) if d in devices], before)
            self.store.insert_commands(conn, self._commands)
            self.store.save_results(conn, list(self._results.values()))
            append(self.store, conn, self._audit, self.audit_chain)
            add_rejections(self.store, conn, self.rejections.drain())
        finally:
            self.reset()


def _problems_json(problems: tuple[str, ...]) -> str:
    return dumps(list(problems)) if problems else "[]"


def _publish(topic: str, payload: bytes, retain: bool, trace_id: str, content_type: str | None = None) -> Outgoing:
    return Outgoing(topic, payload, retain, content_type, trace_id)
