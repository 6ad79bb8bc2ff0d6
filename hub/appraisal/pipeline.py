"""The orchestrator: one batch of evidence in, verdicts committed, messages out.

Stages, in order, for a batch:

1. route: topic ``fleet/{device}/{leaf}`` and Content Type pick the scheme;
   the per-device rate limit drops a flood before any cryptography;
2. verify (no lock held): the trust anchor comes from the registry by the
   topic's device id, never from the message; the scheme authenticates;
3. decide (no lock held): the batch's device rows, the epoch and the evidence
   already decided are read once; duplicates, replay and freshness are
   checked, the scheme appraises, policy picks the action, and the results
   and commands are built and signed. A device's evidence within a batch is
   decided in counter order; evidence below the device's mark but within its
   anti-replay window and never judged is judged late (RFC 4303 §3.4.3,
   hub/appraisal/antireplay.py);
4. commit (one transaction, the only work under the write lock): the device
   rows, the epoch and the evidence already decided are read again under
   lock and must equal what step 3 decided on, challenge nonces are claimed,
   then verdicts, device state, commands and audit entries are written and
   committed together. If anything differs (another worker or an operator
   changed one of the devices in between: time-of-check/time-of-use), the
   transaction is rolled back and the whole batch is decided again under the
   lock, as if step 3 had run there; so a key revoked or rotated since step 2
   still turns the verdict negative;
5. the caller publishes the returned messages, then acknowledges the batch:
   nothing is acknowledged before its verdict is committed and its result signed.

``prepare`` runs stages 1 and 2 and ``complete`` the rest, so a worker can verify
one batch while it commits the batch before (hub/server/worker.py): ``complete``
takes the rows committed meanwhile from the worker's cache and verifies again
what was verified with an anchor that changed, and step 4's check still catches
anything else that moved.

Evidence errors become negative verdicts; only ``StoreError`` (an
infrastructure fault) escapes, and then nothing of the batch is acknowledged.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from cryptography.x509 import Certificate
from sqlalchemy import Connection

from hub import wire
from hub.appraisal import antireplay
from hub.appraisal.ratelimit import RateLimiter
from hub.appraisal.verdicts import Decider, Decision
from hub.crypto.cose import CoseError, decode_sign1
from hub.crypto.freshness import check_nonce
from hub.crypto.hubkeys import HubKeys
from hub.crypto.keys import KeyFileError, PublicKey, load_public_pem
from hub.crypto.mac0 import decode_mac0, is_mac0, mac_structure
from hub.envelope import Incoming, Outgoing
from hub.reference.values import References
from hub.schemes import SchemeRegistry
from hub.schemes.base import Claims, EvidenceError, EvidenceScheme, TrustAnchor
from hub.store.db import DeviceRecord, Store

log = logging.getLogger(__name__)
_K = TypeVar("_K")
_V = TypeVar("_V")


class _Conflict(Exception):
    """Under the lock, the state a batch was decided on is no longer the state in the database."""

    def __init__(self, committed: set[str] | None = None, devices: dict[str, DeviceRecord] | None = None) -> None:
        super().__init__()
        self.committed = committed or set()
        """Devices whose decisions (quarantines) already committed ahead of the rest of the batch."""
        self.devices = devices or {}


Urgent = Callable[[list[Decision], list[Incoming]], None]
"""Called between the two commits of a batch with quarantines: their decisions (committed) and messages."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a batch was decided on outside the lock (checked again under it by each commit)."""

    devices: dict[str, DeviceRecord]
    before: dict[str, tuple[object, ...]]
    epoch: int
    keys: list[tuple[str, str, str]]
    known: frozenset[tuple[str, str, str]]
    nonces: list[tuple[bytes, str]]
    now: float


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
    cached_row: _AnchorRow | None = None  # set when the anchor came from the worker's cache, not a read
    verified_row: _AnchorRow | None = None  # the row whose anchor verified it


@dataclass(slots=True)
class Prepared:
    """A batch routed and verified (``Pipeline.prepare``), waiting to be decided and committed."""

    routed: list[_Routed]
    outcome: BatchOutcome
    rows: dict[str, DeviceRecord]
    """The device rows the anchors came from, as read or cached at ``prepare``."""
    now: float


@dataclass(frozen=True, slots=True)
class _AnchorRow:
    """What verification needs of a device row; equal to the locked row's only if nothing of it changed."""

    device_id: str
    device_class: str
    public_key_pem: str | None
    ueid: bytes | None
    key_version: int
    revoked: bool

    @classmethod
    def of(cls, device: DeviceRecord) -> _AnchorRow:
        return cls(device.device_id, device.device_class, device.public_key_pem, device.ueid, device.key_version,
                   device.revoked)


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
        anchor_cache_max: int = 100_000,
        key_cache_max: int = 4_096,
        replay_window: int = antireplay.DEFAULT_WIDTH,
    ) -> None:
        self.store = store
        self.registry = registry
        self.keys = keys
        self.references = references
        self.rate_limiter = rate_limiter
        self.clock = clock
        self.ca_certificates = ca_certificates
        self.decider = Decider(store, keys, references, command_ttl_s=command_ttl_s, epoch_period_s=epoch_period_s,
                               replay_window=replay_window)
        self.decider.platform_schemes = registry.platform_schemes
        self._key_cache: dict[str, PublicKey] = {}
        """PEM -> parsed public key (about 2.3 KB each with OpenSSL's object; a miss costs a parse, ~10 µs), at
        most ``key_cache_max`` (setting), the oldest dropped first."""
        self.key_cache_max = max(0, key_cache_max)
        self._committed: dict[str, tuple[object, ...]] = {}
        """device id -> its row (``DeviceRecord.snapshot``) as this worker last committed it (about 0.7 KB each),
        at most ``anchor_cache_max`` (setting), the oldest dropped first. Verification and the unlocked
        decision start from it; the commit checks it against the row locked in the database."""
        self.anchor_cache_max = max(0, anchor_cache_max)
        self.device_classes: dict[str, str] = {}
        """device id -> class of the devices seen in the last batch (for metrics labels)."""
        self._nonces: list[tuple[bytes, str]] | None = None
        """While deciding outside the lock: the challenge nonces to claim under it (None: claim at once)."""
        self.conflicts = 0
        """Batches decided again under the lock because their state changed meanwhile (for the bench)."""

    def process(self, batch: Sequence[Incoming], urgent: Urgent | None = None) -> BatchOutcome:
        """Decide and commit ``batch``. With ``urgent``: when some of its devices get a quarantine and others
        do not, those devices' decisions commit first in a transaction of their own and ``urgent`` is called
        with them and their messages (to publish the commands) before the rest of the batch commits."""
        return self.complete(self.prepare(batch), urgent)

    def prepare(self, batch: Sequence[Incoming]) -> Prepared:
        """Stages 1 and 2: route, read the anchors (the worker's cache of committed rows, one read for the
        rest; no lock) and verify. Writes nothing and leaves the decider alone, so it may run on one thread
        while ``complete`` commits the batch before on another (the worker overlaps them)."""
        outcome = BatchOutcome()
        routed = [r for r in (self._route(m, outcome) for m in batch) if r is not None]
        if not routed:
            return Prepared(routed, outcome, {}, self.clock())
        rows, cached = self._rows({r.device_id for r in routed})
        now = self.clock()
        mac0 = {r.device_id for r in routed if is_mac0(r.message.payload)}
        anchors = {i: (row, self._anchor(row, now, i in mac0))
                   for i, row in ((i, _AnchorRow.of(d)) for i, d in rows.items())}
        for item in routed:
            row, anchor = anchors.get(item.device_id, (None, None))
            item.anchor_revoked = row is not None and row.revoked
            item.cached_row = row if item.device_id in cached else None
            item.verified_row = row
            self._verify(item, anchor)
        return Prepared(routed, outcome, rows, now)

    def complete(self, prepared: Prepared, urgent: Urgent | None = None) -> BatchOutcome:
        """Stages 3 to 5 of a prepared batch: decide, sign, commit (see ``process``). Rows this worker
        committed after ``prepare`` read them (the batch before, when the two overlapped) are taken from its
        cache, and evidence verified with an anchor that changed meanwhile is verified again. Raises
        ``StoreError``: nothing of the batch is then committed (or only its quarantines, given to ``urgent``)."""
        outcome, routed, now = prepared.outcome, prepared.routed, prepared.now
        if not routed:
            return outcome
        rows = self._refresh(prepared)
        routed = _in_counter_order(routed)
        ids = {r.device_id for r in routed}
        try:
            devices = self._decide_unlocked(routed, rows, now, outcome, urgent)
        except _Conflict as conflict:
            self.conflicts += 1
            done = conflict.committed  # devices whose quarantines committed ahead: not decided again
            outcome.decisions[:] = [d for d in outcome.decisions if d.device_id in done]
            rest = [r for r in routed if r.device_id not in done]
            devices = {i: d for i, d in conflict.devices.items() if i in done}
            if rest:
                devices.update(self._decide_locked(rest, ids - done, now, outcome))
        self._remember(devices.values())
        for decision in outcome.decisions:
            outcome.publishes.extend(decision.publishes)
        return outcome

    def _refresh(self, prepared: Prepared) -> dict[str, DeviceRecord]:
        """The prepared rows, each replaced by this worker's cached copy where that differs (committed since
        ``prepare`` read it); evidence whose anchor changed with it is verified again."""
        rows = prepared.rows
        changed: dict[str, DeviceRecord] = {}
        for device_id, record in list(rows.items()):
            cached = self._committed.get(device_id)
            if cached is not None and cached != record.snapshot():
                rows[device_id] = changed[device_id] = DeviceRecord(*cached)  # type: ignore[arg-type]
        for item in prepared.routed:
            device = changed.get(item.device_id)
            if device is None:
                continue
            anchor_row = _AnchorRow.of(device)
            if anchor_row != item.verified_row:
                item.claims, item.error, item.anchor_revoked = None, None, anchor_row.revoked
                item.cached_row = item.verified_row = anchor_row
                self._verify(item, self._anchor(anchor_row, prepared.now, is_mac0(item.message.payload)))
        return rows

    def _decide_unlocked(self, routed: Sequence[_Routed], devices: dict[str, DeviceRecord], now: float,
                         outcome: BatchOutcome, urgent: Urgent | None = None) -> dict[str, DeviceRecord]:
        """Decide, build and sign with no lock held on ``devices`` (as verified with), then commit if the
        locked state is the state decided on; ``_Conflict`` (nothing written) if it is not."""
        self.decider.reset()
        before = {i: d.snapshot() for i, d in devices.items()}
        with self.store.reading() as conn:
            epoch = int(self.store.get_state(conn, "epoch") or 0)
            keys = self._evidence_keys(routed)
            seen = self.store.existing_evidence(conn, keys)
            known = frozenset(seen)
            self.device_classes = {d.device_id: d.device_class for d in devices.values()}
            self.decider.epoch = epoch
            self._nonces = []
            try:
                for item in routed:
                    outcome.decisions.append(self._decide(conn, item, devices.get(item.device_id), epoch, seen, now))
            finally:
                nonces, self._nonces = self._nonces, None
        first = {d.device_id for d in outcome.decisions if d.action == "quarantine"} if urgent else set()
        plan = _Plan(devices, before, epoch, keys, known, nonces, now)
        try:
            if first and any(d.device_id not in first for d in outcome.decisions):
                aside = self.decider.set_aside(first)
                self._commit(plan, first, set())
                urgent_items = [r for r in routed if r.device_id in first]
                assert urgent is not None
                urgent([d for d in outcome.decisions if d.device_id in first], [r.message for r in urgent_items])
                self.decider.restore(aside)
                self._commit(plan, {r.device_id for r in routed} - first, first)
            else:
                self._commit(plan, {r.device_id for r in routed}, set())
        finally:
            self.decider.reset()
        return devices

    def _commit(self, plan: _Plan, ids: set[str], committed: set[str]) -> None:
        """Write the decider's pending writes of ``ids`` if, under the lock, their rows, the epoch, the evidence
        already decided and the challenge nonces are what they were decided on; else ``_Conflict``
        (``committed``: the devices of this batch already committed)."""
        with self.store.transaction() as conn:
            locked = self.store.devices(conn, ids, lock=True)
            keys = [k for k in plan.keys if k[0] in ids]
            if ({i: d.snapshot() for i, d in locked.items()} != {i: s for i, s in plan.before.items() if i in ids}
                    or int(self.store.get_state(conn, "epoch") or 0) != plan.epoch
                    or self.store.existing_evidence(conn, keys) != {k for k in plan.known if k[0] in ids}
                    or not all(self.store.use_nonce(conn, n, d, plan.now) for n, d in plan.nonces if d in ids)):
                raise _Conflict(committed, plan.devices)
            self.decider.flush(conn, plan.devices, plan.before)

    def _decide_locked(self, routed: Sequence[_Routed], ids: set[str], now: float,
                       outcome: BatchOutcome) -> dict[str, DeviceRecord]:
        """Decide the whole batch inside one transaction, on the rows as locked."""
        self.decider.reset()
        with self.store.transaction() as conn:
            devices = self.store.devices(conn, ids, lock=True)
            self._recheck_cached(routed, devices)
            before = {i: d.snapshot() for i, d in devices.items()}
            self.device_classes = {d.device_id: d.device_class for d in devices.values()}
            epoch = int(self.store.get_state(conn, "epoch") or 0)
            self.decider.epoch = epoch
            seen = self.store.existing_evidence(conn, self._evidence_keys(routed))
            for item in routed:
                outcome.decisions.append(self._decide(conn, item, devices.get(item.device_id), epoch, seen, now))
            self.decider.flush(conn, devices, before)
        return devices

    @staticmethod
    def _evidence_keys(routed: Sequence[_Routed]) -> list[tuple[str, str, str]]:
        return [(r.device_id, r.claims.scheme, r.claims.dedup_key) if r.claims is not None
                else (r.device_id, r.scheme.name if r.scheme else "unknown", _unparsed_key(r)) for r in routed]

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

    def _rows(self, ids: set[str]) -> tuple[dict[str, DeviceRecord], set[str]]:
        """The batch's device rows (no lock held): from the worker's cache of rows as it last committed them,
        and one read for the others; and the ids that came from the cache. Either may be stale; the commit
        compares them with the rows locked in the database (and ``_recheck_cached`` verifies again)."""
        hits = ((i, self._committed.get(i)) for i in ids)  # get: the committing thread may evict meanwhile
        devices = {i: DeviceRecord(*row) for i, row in hits if row is not None}  # type: ignore[arg-type]
        cached = set(devices)
        missing = ids - cached
        if missing:
            with self.store.reading() as conn:
                devices.update(self.store.devices(conn, missing))
        return devices, cached

    def _recheck_cached(self, routed: Sequence[_Routed], devices: dict[str, DeviceRecord]) -> None:
        """Under the lock: evidence verified with a cached anchor that no longer matches the device row (the
        key or its version changed in another worker or by an operator since this worker last committed it)
        is verified again with the anchor of the locked row, as if it had been read just now. Anchors read
        from the database in this batch are left as they are: a change between that read and the lock is
        the rotation or revocation ``_decide`` refuses."""
        now = self.clock()
        for item in routed:
            if item.cached_row is None:
                continue
            device = devices.get(item.device_id)
            if device is None:  # no longer enrolled: _decide rejects it
                self._committed.pop(item.device_id, None)
                continue
            row = _AnchorRow.of(device)
            if row != item.cached_row:  # compared with the row this item was verified with
                _bounded_put(self._committed, item.device_id, device.snapshot(), self.anchor_cache_max)
                item.claims, item.error, item.anchor_revoked, item.cached_row = None, None, row.revoked, None
                self._verify(item, self._anchor(row, now, is_mac0(item.message.payload)))

    def _remember(self, devices: Iterable[DeviceRecord]) -> None:
        """After a commit: the anchors of the batch's devices as committed (bounded)."""
        for device in devices:
            # a class or version is one of few values: keep one copy of each, not one per device's row
            device.device_class = _shared(device.device_class)
            if device.firmware_version is not None:
                device.firmware_version = _shared(device.firmware_version)
            _bounded_put(self._committed, device.device_id, device.snapshot(), self.anchor_cache_max)

    def _anchor(self, row: _AnchorRow, now: float, mac0: bool) -> TrustAnchor:
        """The device's trust anchor. Its symmetric key (a file, like the hub's secrets) is read only for
        COSE_Mac0 evidence (``mac0``) of a device without a public key, not for every message of a CA-issued
        device; ``_verify`` reads it for other evidence only to name the refusal."""
        key = None
        if row.public_key_pem and not row.revoked:
            key = self._key_cache.get(row.public_key_pem)
            if key is None:
                try:
                    key = load_public_pem(row.public_key_pem)
                except KeyFileError:
                    key = None
                else:
                    _bounded_put(self._key_cache, row.public_key_pem, key, self.key_cache_max)
        # a device without a public key may have a symmetric one (COSE_Mac0 PSA tokens), kept like the hub's secrets
        symmetric = mac0 and not row.public_key_pem and not row.revoked
        mac_key = self.keys.device_mac_key(row.device_id) if symmetric else None
        return TrustAnchor(row.device_id, row.device_class, key, row.ueid, row.key_version,
                           self.ca_certificates, now, mac_key)

    def _verify(self, item: _Routed, anchor: TrustAnchor | None) -> None:
        self._check(item, anchor)
        if (item.error is not None and item.error.reason == "no-key" and anchor is not None
                and anchor.public_key is None and anchor.mac_key is None and not item.anchor_revoked
                and not is_mac0(item.message.payload)):  # a Mac0's key was looked up with its anchor
            # refused for want of a key: if the device has a symmetric one, say it must send COSE_Mac0
            mac_key = self.keys.device_mac_key(item.device_id)
            if mac_key is not None:
                item.error = None
                self._check(item, replace(anchor, mac_key=mac_key))

    def _check(self, item: _Routed, anchor: TrustAnchor | None) -> None:
        item.anchor = anchor
        if item.scheme is None:
            item.error = EvidenceError("unknown-media-type", f"no scheme for {item.message.content_type!r}")
        elif anchor is None:
            item.error = EvidenceError("unknown-device", f"{item.device_id!r} is not enrolled")
        elif anchor.public_key is None and anchor.mac_key is None and (item.anchor_revoked
                                                                       or not anchor.ca_certificates):
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
        nonce = item.claims.nonce if item.claims is not None else None
        ctx = self.decider.context(item.device_id, scheme_name, item.trace_id, item.message.payload, now, nonce)
        if device is None:  # not enrolled: counted by the worker, never stored (hub/appraisal/storage.py)
            return self.decider.unknown(ctx)
        if item.anchor is None:  # the unparsed key (a hash) only where it is used
            return self.decider.reject(conn, ctx, _unparsed_key(item), item.error or EvidenceError("unknown-device"),
                                       seen)
        if device.revoked or device.key_version != item.anchor.key_version:
            reason = "revoked" if device.revoked else "key-rotated"
            return self.decider.reject(conn, ctx, _unparsed_key(item),
                                       EvidenceError(reason, "key changed during verification"), seen)
        if item.claims is None:
            error = item.error or EvidenceError("unverified")
            if error.authenticated:
                return self.decider.misbehaving(conn, ctx, device, _unparsed_key(item), error, seen,
                                                platform=item.scheme is not None and item.scheme.attests_platform)
            return self.decider.reject(conn, ctx, _unparsed_key(item), error, seen)
        claims = item.claims
        if (item.device_id, claims.scheme, claims.dedup_key) in seen:
            return self.decider.duplicate(conn, ctx, device, claims,
                                          platform=item.scheme is not None and item.scheme.attests_platform)
        seen.add((item.device_id, claims.scheme, claims.dedup_key))
        late = False
        if claims.counter is not None:
            mark = (device.bootcount, device.seq)
            width = self.decider.replay_window
            placed = antireplay.place(claims.counter, mark, device.seq_window, width)
            if placed == antireplay.REPLAY:
                return self.decider.reject(conn, ctx, claims.dedup_key,
                                           EvidenceError("replay", antireplay.why_replay(claims.counter, mark, width),
                                                         authenticated=True), seen, device=device)
            late = placed == antireplay.LATE
        fresh = check_nonce(self.keys.nonce_secret, claims.nonce, item.device_id, epoch)
        if not fresh.ok:
            reason = "stale-nonce" if "stale" in fresh.problem else "bad-nonce"
            return self.decider.reject(conn, ctx, claims.dedup_key,
                                       EvidenceError(reason, fresh.problem, authenticated=True), seen, device=device)
        if fresh.kind == "challenge" and not self._use_nonce(conn, claims.nonce or b"", item.device_id, now):
            return self.decider.reject(conn, ctx, claims.dedup_key,
                                       EvidenceError("nonce-reused", "challenge nonce was already used",
                                                     authenticated=True), seen, device=device)
        assert item.scheme is not None
        return self.decider.appraise(conn, ctx, device, item.scheme, claims, late=late)


    def _use_nonce(self, conn: Connection, nonce: bytes, device_id: str, now: float) -> bool:
        """Claim a challenge nonce: at once under the lock, or (deciding outside it) noted for the commit,
        which claims it under the lock and decides the batch again there if it was used meanwhile."""
        if self._nonces is None:
            return self.store.use_nonce(conn, nonce, device_id, now)
        if any(nonce == n for n, _ in self._nonces):
            return False
        self._nonces.append((nonce, device_id))
        return True


def _in_counter_order(routed: list[_Routed]) -> list[_Routed]:
    """``routed`` with each device's evidence that carries a counter in counter order, in the places that
    evidence held (everything else keeps its place): within one batch, older evidence is judged before newer
    and is not late."""
    places: dict[str, list[int]] = {}
    for index, item in enumerate(routed):
        if item.claims is not None and item.claims.counter is not None:
            places.setdefault(item.device_id, []).append(index)
    ordered = list(routed)
    for indices in places.values():
        if len(indices) > 1:
            items = sorted((routed[i] for i in indices), key=_counter)
            for index, item in zip(indices, items, strict=True):
                ordered[index] = item
    return ordered


def _counter(item: _Routed) -> tuple[int, int]:
    assert item.claims is not None and item.claims.counter is not None
    return item.claims.counter


def _unparsed_key(item: _Routed) -> str:
    """The dedup key of evidence without parsed claims. Evidence the device signed but that breaks its
    profile carries no checked nonce or counter, so a copy must be recognised as one: the key comes from
    the signed content (protected header and payload), not the message bytes, which an attacker can
    vary (an added unprotected header, ECDSA s -> n - s) while the signature still verifies."""
    if item.error is not None and item.error.authenticated:
        raw = item.message.payload
        try:
            if is_mac0(raw):  # a PSA COSE_Mac0: the bytes its MAC covers
                mac = decode_mac0(raw, max_bytes=len(raw))
                return "signed:" + hashlib.sha256(mac_structure(mac.protected_bytes, mac.payload)).hexdigest()[:32]
            message = decode_sign1(raw, max_bytes=len(raw))
        except CoseError:
            pass
        else:
            return "signed:" + hashlib.sha256(message.to_be_signed()).hexdigest()[:32]
    return "raw:" + hashlib.sha256(item.message.payload).hexdigest()[:32]


def _bounded_put(cache: dict[_K, _V], key: _K, value: _V, limit: int) -> None:
    """``cache[key] = value`` keeping at most ``limit`` entries (0: none), the oldest inserted dropped first."""
    if key in cache:
        cache[key] = value
        return
    while cache and len(cache) >= limit:
        try:
            del cache[next(iter(cache))]
        except (KeyError, RuntimeError, StopIteration):  # changed by the other stage's thread meanwhile
            continue
    if limit > 0:
        cache[key] = value


_SHARED: dict[str, str] = {}
_SHARED_MAX = 4096


def _shared(value: str) -> str:
    """One object per distinct value of a low-cardinality column (at most ``_SHARED_MAX`` values)."""
    if len(_SHARED) < _SHARED_MAX:
        return _SHARED.setdefault(value, value)
    return _SHARED.get(value, value)
