"""The orchestrator: one batch of evidence in, verdicts committed, messages out.

Stages, in order, for a batch:

1. route: topic ``fleet/{device}/{leaf}`` and Content Type pick the scheme;
   the per-device rate limit drops a flood before any cryptography;
2. verify (no lock held): the trust anchor comes from the registry by the
   topic's device id, never from the message; the scheme authenticates;
3. decide (one transaction): the device rows are re-read under lock, so a
   key revoked or rotated since step 2 turns the verdict negative
   (time-of-check/time-of-use); duplicates, replay and freshness are checked,
   the scheme appraises, policy picks the action, and verdicts, device state,
   commands and audit entries are written and committed together;
4. the caller publishes the returned messages, then acknowledges the batch.

Evidence errors become negative verdicts; only ``StoreError`` (an
infrastructure fault) escapes, and then nothing of the batch is acknowledged.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.x509 import Certificate
from sqlalchemy import Connection

from hub import wire
from hub.cose import CoseError, decode_sign1
from hub.envelope import Incoming, Outgoing
from hub.freshness import check_nonce
from hub.hubkeys import HubKeys
from hub.keys import KeyFileError, PublicKey, load_public_pem
from hub.ratelimit import RateLimiter
from hub.references import References
from hub.schemes import SchemeRegistry
from hub.schemes.base import Claims, EvidenceError, EvidenceScheme, TrustAnchor
from hub.store.db import DeviceRecord, Store
from hub.verdicts import Decider, Decision

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchOutcome:
    decisions: list[Decision] = field(default_factory=list)
    publishes: list[Outgoing] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (topic, why) not appraised at all


@dataclass(slots=True)
class _Routed:
    message: Incoming
    device_id: str
    scheme: EvidenceScheme | None
    trace_id: str
    claims: Claims | None = None
    error: EvidenceError | None = None
    anchor: TrustAnchor | None = None
    anchor_revoked: bool = False


class Pipeline:
    def __init__(
        self,
        store: Store,
        registry: SchemeRegistry,
        keys: HubKeys,
        references: References,
        *,
        rate_limiter: RateLimiter | None = None,
        command_ttl_s: int = 7 * 24 * 3600,
        ca_certificates: tuple[Certificate, ...] = (),
        epoch_period_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.registry = registry
        self.keys = keys
        self.references = references
        self.rate_limiter = rate_limiter
        self.clock = clock
        self.ca_certificates = ca_certificates
        self.decider = Decider(store, keys, references, command_ttl_s=command_ttl_s, epoch_period_s=epoch_period_s)
        self._key_cache: dict[str, PublicKey] = {}
        self.device_classes: dict[str, str] = {}
        """device id -> class of the devices seen in the last batch (for metrics labels)."""

    def process(self, batch: Sequence[Incoming]) -> BatchOutcome:
        outcome = BatchOutcome()
        routed = [r for r in (self._route(m, outcome) for m in batch) if r is not None]
        if not routed:
            return outcome
        with self.store.reading() as conn:
            anchors, revoked = self._anchors(conn, {r.device_id for r in routed})
        for item in routed:
            item.anchor_revoked = item.device_id in revoked
            self._verify(item, anchors.get(item.device_id))
        now = self.clock()
        self.decider.reset()
        with self.store.transaction() as conn:
            devices = self.store.devices(conn, {r.device_id for r in routed}, lock=True)
            self.device_classes = {d.device_id: d.device_class for d in devices.values()}
            epoch = int(self.store.get_state(conn, "epoch") or 0)
            self.decider.epoch = epoch
            seen = self.store.existing_evidence(
                conn, [(r.device_id, r.claims.scheme, r.claims.dedup_key) if r.claims is not None
                       else (r.device_id, r.scheme.name if r.scheme else "unknown", _unparsed_key(r))
                       for r in routed]
            )
            for item in routed:
                decision = self._decide(conn, item, devices.get(item.device_id), epoch, seen, now)
                outcome.decisions.append(decision)
            self.decider.flush(conn, devices)
        for decision in outcome.decisions:
            outcome.publishes.extend(decision.publishes)
        return outcome

    # --- stages ------------------------------------------------------------------

    def _route(self, message: Incoming, outcome: BatchOutcome) -> _Routed | None:
        parts = message.topic.split("/")
        if len(parts) != 3 or parts[0] != wire.FLEET_ROOT or not parts[1]:
            outcome.dropped.append((message.topic, "not a device topic"))
            return None
        device_id, leaf = parts[1], parts[2]
        if self.rate_limiter is not None and not self.rate_limiter.allow(device_id, self.clock()):
            outcome.dropped.append((message.topic, "rate limit exceeded"))
            return None
        scheme = self.registry.find(message.content_type, leaf)
        trace_id = message.trace_id or uuid.uuid4().hex[:16]
        return _Routed(message, device_id, scheme, trace_id)

    def _anchors(self, conn: Connection, ids: set[str]) -> tuple[dict[str, TrustAnchor], set[str]]:
        devices = self.store.devices(conn, ids).values()
        return {d.device_id: self._anchor(d) for d in devices}, {d.device_id for d in devices if d.revoked}

    def _anchor(self, device: DeviceRecord) -> TrustAnchor:
        key = None
        if device.public_key_pem and not device.revoked:
            key = self._key_cache.get(device.public_key_pem)
            if key is None:
                try:
                    key = load_public_pem(device.public_key_pem)
                except KeyFileError:
                    key = None
                else:
                    if len(self._key_cache) > 100_000:
                        self._key_cache.clear()
                    self._key_cache[device.public_key_pem] = key
        return TrustAnchor(device.device_id, device.device_class, key, device.ueid, device.key_version,
                           self.ca_certificates, self.clock())

    def _verify(self, item: _Routed, anchor: TrustAnchor | None) -> None:
        item.anchor = anchor
        if item.scheme is None:
            item.error = EvidenceError("unknown-media-type", f"no scheme for {item.message.content_type!r}")
        elif anchor is None:
            item.error = EvidenceError("unknown-device", f"{item.device_id!r} is not enrolled")
        elif anchor.public_key is None and (item.anchor_revoked or not anchor.ca_certificates):
            item.error = EvidenceError("revoked" if item.anchor_revoked else "no-key",
                                       "device is revoked or has no usable key")
        else:
            try:
                item.claims = item.scheme.verify(item.message.payload, anchor)
            except EvidenceError as exc:
                item.error = exc
            except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
                # A scheme bug must not take the worker down: the evidence is rejected and logged.
                log.exception("scheme %s failed on evidence", item.scheme.name, extra={"device_id": item.device_id})
                item.error = EvidenceError("verifier-error", type(exc).__name__)

    def _decide(
        self,
        conn: Connection,
        item: _Routed,
        device: DeviceRecord | None,
        epoch: int,
        seen: set[tuple[str, str, str]],
        now: float,
    ) -> Decision:
        scheme_name = item.scheme.name if item.scheme else "unknown"
        raw_key = _unparsed_key(item)
        nonce = item.claims.nonce if item.claims is not None else None
        ctx = self.decider.context(item.device_id, scheme_name, item.trace_id, item.message.payload, now, nonce)
        if device is None or item.anchor is None:
            return self.decider.reject(conn, ctx, raw_key, item.error or EvidenceError("unknown-device"), seen)
        if device.revoked or device.key_version != item.anchor.key_version:
            reason = "revoked" if device.revoked else "key-rotated"
            return self.decider.reject(conn, ctx, raw_key, EvidenceError(reason, "key changed during verification"),
                                       seen)
        if item.claims is None:
            error = item.error or EvidenceError("unverified")
            if error.authenticated:
                return self.decider.misbehaving(conn, ctx, device, raw_key, error, seen)
            return self.decider.reject(conn, ctx, raw_key, error, seen)
        claims = item.claims
        if (item.device_id, claims.scheme, claims.dedup_key) in seen:
            return self.decider.duplicate(conn, ctx, device, claims)
        seen.add((item.device_id, claims.scheme, claims.dedup_key))
        if claims.counter is not None and claims.counter <= (device.bootcount, device.seq):
            return self.decider.reject(
                conn, ctx, claims.dedup_key,
                EvidenceError("replay", f"counter {claims.counter} is not above {(device.bootcount, device.seq)}",
                              authenticated=True),
                seen, device=device,
            )
        fresh = check_nonce(self.keys.nonce_secret, claims.nonce, item.device_id, epoch)
        if not fresh.ok:
            reason = "stale-nonce" if "stale" in fresh.problem else "bad-nonce"
            return self.decider.reject(conn, ctx, claims.dedup_key,
                                       EvidenceError(reason, fresh.problem, authenticated=True), seen, device=device)
        if fresh.kind == "challenge" and not self.store.use_nonce(conn, claims.nonce or b"", item.device_id, now):
            return self.decider.reject(conn, ctx, claims.dedup_key,
                                       EvidenceError("nonce-reused", "challenge nonce was already used",
                                                     authenticated=True), seen, device=device)
        assert item.scheme is not None
        return self.decider.appraise(conn, ctx, device, item.scheme, claims)


def _unparsed_key(item: _Routed) -> str:
    """The dedup key of evidence without parsed claims. Evidence the device signed but that breaks its
    profile carries no checked nonce or counter, so a copy must be recognised as one: the key comes from
    the signed content (protected header and payload), not the message bytes, which an attacker can
    vary (an added unprotected header, ECDSA s -> n - s) while the signature still verifies."""
    if item.error is not None and item.error.authenticated:
        try:
            message = decode_sign1(item.message.payload, max_bytes=len(item.message.payload))
        except CoseError:
            pass
        else:
            return "signed:" + hashlib.sha256(message.to_be_signed()).hexdigest()[:32]
    return "raw:" + hashlib.sha256(item.message.payload).hexdigest()[:32]
