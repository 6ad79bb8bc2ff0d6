"""Data-integrity evidence: signed, hash-chained telemetry batches (profile ``wire.DATA_PROFILE``).

A batch is a COSE_Sign1 whose signed payload is an EAT claims map naming the
batch (boot count, batch number, previous batch digest, records digest and
the firmware-attestation context it was produced under); the records ride
alongside in the unprotected header and are bound by their digest. The format,
the vectors and the rules are in docs/schemes/data.md.

``verify`` authenticates the envelope and checks the records against the signed
digest: records that do not match were altered after signing, by the device or
by anyone on the path, so the message is treated as unauthenticated (rejected,
never republished, never able to move the device). ``appraise`` checks the batch
against the device's chain state and firmware verdict, reports the AR4SI
sourced-data claim, and hands back the records to republish only when the batch
is in order and the device's firmware verdict is affirming.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

import cbor2

from hub import wire
from hub.crypto.cbor_strict import CborError, loads_strict
from hub.reference import trust
from hub.reference.trust import Tier, TrustVector
from hub.schemes.base import Appraisal, AppraisalInputs, Claims, DeviceState, EvidenceError, TrustAnchor
from hub.schemes.claims import optional, require, require_nonce, typed, uint
from hub.schemes.firmware import verify_cose_message

MAX_BATCH_BYTES = 32 * 1024
MAX_RECORDS = 256
MAX_METRIC_CHARS = 64
DIGEST_SIZE = 32


@dataclass(frozen=True, slots=True)
class Record:
    time: int
    metric: str
    value: int | float


@dataclass(frozen=True, slots=True)
class ChainRef:
    """A position in a device's chain: boot, batch number, digest of that batch's signed payload."""

    bootcount: int
    seq: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class DataBatch:
    ueid: bytes
    bootcount: int
    seq: int
    prev: bytes
    digest: bytes
    """SHA-256 of the signed payload: this batch's link in the chain."""
    records: tuple[Record, ...]
    attestation: tuple[int, int] | None
    prev_boot: ChainRef | None
    evidence: bytes
    """The COSE_Sign1 as received, records included, for consumers that verify end to end."""


@dataclass(frozen=True, slots=True)
class ChainState:
    """What the hub holds of a device's chain (columns chain_bootcount, chain_seq, chain_head).

    ``chain_head`` is the head digest (32 bytes), followed by the digest of batch 1 of
    the same boot (32 more) when the hub accepted that batch: a second genesis batch in
    one boot is then a restart, while a batch 1 arriving after a joined-midway chain
    is only late.
    """

    bootcount: int
    seq: int
    head: bytes
    genesis: bytes | None

    @classmethod
    def load(cls, state: DeviceState) -> ChainState | None:
        raw = state.chain_head
        if state.chain_bootcount is None or state.chain_seq is None or raw is None:
            return None
        if len(raw) not in (DIGEST_SIZE, 2 * DIGEST_SIZE):
            return None  # unreadable state: start over as after enrolment
        genesis = raw[DIGEST_SIZE:] or None
        return cls(state.chain_bootcount, state.chain_seq, raw[:DIGEST_SIZE], genesis)

    def columns(self) -> dict[str, object]:
        return {"chain_bootcount": self.bootcount, "chain_seq": self.seq,
                "chain_head": self.head + (self.genesis or b"")}


class DataScheme:
    name = "data"
    media_types = frozenset({wire.DATA_MEDIA_TYPE})
    topic_leaf = wire.DATA
    attests_platform = False

    def verify(self, raw: bytes, anchor: TrustAnchor) -> Claims:
        message, claims = verify_cose_message(raw, anchor, MAX_BATCH_BYTES, max_depth=4)
        if claims.get(wire.EAT_PROFILE) != wire.DATA_PROFILE:
            raise EvidenceError("wrong-profile", "eat_profile is not the data-batch profile", authenticated=True)
        ueid = require(claims, wire.UEID, bytes, "ueid")
        if anchor.ueid is not None and not hmac.compare_digest(ueid, anchor.ueid):
            raise EvidenceError("ueid-mismatch", "ueid differs from the one bound at enrolment", authenticated=True)
        signed_digest = _records_digest(claims)
        records_bytes = message.unprotected.get(wire.DATA_RECORDS)
        # Everything above is signed by the device; the records are not. If they are missing or do
        # not match the signed digest they were changed after signing, by someone the hub cannot
        # name: unauthenticated, so the orchestrator rejects the message without moving the device.
        if not isinstance(records_bytes, bytes):
            raise EvidenceError("records-missing", "no records bstr in the unprotected header")
        if not hmac.compare_digest(hashlib.sha256(records_bytes).digest(), signed_digest):
            raise EvidenceError("records-tampered", "records do not match the signed records digest")
        bootcount = uint(claims, wire.BOOTCOUNT, "bootcount")
        seq = uint(claims, wire.DATA_BATCH_SEQ, "batch seq")
        if seq < 1:
            raise EvidenceError("bad-claim", "batch seq starts at 1", authenticated=True)
        body = DataBatch(
            ueid=ueid,
            bootcount=bootcount,
            seq=seq,
            prev=_digest(require(claims, wire.DATA_PREV, bytes, "previous batch digest"), "previous batch digest"),
            digest=hashlib.sha256(message.payload).digest(),
            records=_records(records_bytes),
            attestation=_attestation(claims),
            prev_boot=_prev_boot(claims),
            evidence=raw,
        )
        return Claims(
            scheme=self.name,
            device_id=anchor.device_id,
            dedup_key=f"data:{bootcount}:{seq}:{body.digest.hex()}",
            counter=None,  # batches keep their own order (the chain), apart from the evidence counter
            nonce=require_nonce(claims, wire.NONCE),
            body=body,
            issued_at=optional(claims, wire.IAT, int, "iat"),
        )

    def appraise(self, claims: Claims, inputs: AppraisalInputs) -> Appraisal:
        body = claims.body
        assert isinstance(body, DataBatch)
        return appraise_batch(claims.device_id, body, inputs)


def _digest(value: bytes, name: str) -> bytes:
    if len(value) != DIGEST_SIZE:
        raise EvidenceError("bad-claim", f"{name} must be a {DIGEST_SIZE}-byte SHA-256 digest", authenticated=True)
    return value


def _records_digest(claims: Mapping[object, object]) -> bytes:
    entry = require(claims, wire.DATA_RECORDS_DIGEST, list, "records digest")
    if len(entry) != 2 or entry[0] != wire.SHA256:
        raise EvidenceError("bad-claim", "records digest must be [-16, bstr]", authenticated=True)
    return _digest(typed(entry[1], bytes, "records digest"), "records digest")


def _records(encoded: bytes) -> tuple[Record, ...]:
    try:
        items = loads_strict(encoded, max_bytes=MAX_BATCH_BYTES, max_depth=3)
    except CborError as exc:
        raise EvidenceError("bad-records", f"records: {exc}", authenticated=True) from exc
    if not isinstance(items, (list, tuple)) or not 1 <= len(items) <= MAX_RECORDS:
        raise EvidenceError("bad-records", f"records must be an array of 1..{MAX_RECORDS}", authenticated=True)
    out = []
    for item in items:
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            raise EvidenceError("bad-records", "a record must be [time, metric, value]", authenticated=True)
        time, metric, value = item
        if isinstance(time, bool) or not isinstance(time, int) or time < 0:
            raise EvidenceError("bad-records", "record time must be a uint", authenticated=True)
        if not isinstance(metric, str) or not 1 <= len(metric) <= MAX_METRIC_CHARS:
            raise EvidenceError("bad-records", f"record metric must be 1..{MAX_METRIC_CHARS} characters",
                                authenticated=True)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EvidenceError("bad-records", "record value must be a number", authenticated=True)
        out.append(Record(time, metric, value))
    return tuple(out)


def _attestation(claims: Mapping[object, object]) -> tuple[int, int] | None:
    if wire.DATA_ATTESTATION not in claims:
        raise EvidenceError("missing-claim", f"attestation context ({wire.DATA_ATTESTATION}) is required",
                            authenticated=True)
    value = claims[wire.DATA_ATTESTATION]
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise EvidenceError("bad-claim", "attestation context must be [bootcount, evidence seq] or null",
                            authenticated=True)
    boot, seq = (typed(v, int, "attestation context") for v in value)
    if boot < 0 or seq < 0:
        raise EvidenceError("bad-claim", "attestation context out of range", authenticated=True)
    return boot, seq


def _prev_boot(claims: Mapping[object, object]) -> ChainRef | None:
    value = optional(claims, wire.DATA_PREV_BOOT, list, "previous boot link")
    if value is None:
        return None
    if len(value) != 3:
        raise EvidenceError("bad-claim", "previous boot link must be [bootcount, seq, digest]", authenticated=True)
    boot, seq = typed(value[0], int, "previous boot"), typed(value[1], int, "previous boot seq")
    if boot < 0 or seq < 1:
        raise EvidenceError("bad-claim", "previous boot link out of range", authenticated=True)
    return ChainRef(boot, seq, _digest(typed(value[2], bytes, "previous boot digest"), "previous boot digest"))


# --- appraisal -------------------------------------------------------------------


@dataclass(slots=True)
class _Judgement:
    sourced: int = trust.SOURCED_TRUSTED
    problems: tuple[str, ...] = ()
    republish: bool = True

    def worse(self, value: int, problem: str, *, republish: bool = True) -> None:
        if trust.tier_of(value) >= trust.tier_of(self.sourced):
            self.sourced = value
        self.problems += (problem,)
        self.republish = self.republish and republish


def appraise_batch(device_id: str, batch: DataBatch, inputs: AppraisalInputs) -> Appraisal:
    """Judge an authenticated batch against the device's chain and firmware verdict; never raises."""
    judgement = _Judgement()
    gap = trust.SOURCED_UNKNOWN if inputs.policy.data_gap == "warning" else trust.SOURCED_CONTRAINDICATED
    chain = ChainState.load(inputs.state)
    new_chain = _check_chain(batch, chain, gap, judgement)
    _check_source(batch, inputs.state, judgement)
    vector = TrustVector(instance_identity=trust.IDENTITY_TRUSTWORTHY, sourced_data=judgement.sourced)
    tier = vector.tier()
    updates = new_chain.columns() if new_chain is not None else {}
    verified = None
    if judgement.republish and tier in (Tier.AFFIRMING, Tier.WARNING):
        verified = verified_data(device_id, batch, tier, judgement.sourced, judgement.problems)
    return Appraisal(vector, judgement.problems, state_updates=updates, verified_data=verified)


def _check_chain(batch: DataBatch, chain: ChainState | None, gap: int, j: _Judgement) -> ChainState | None:
    """Order and linkage; returns the chain state to store (None: unchanged)."""
    b, s = batch.bootcount, batch.seq
    is_genesis = hmac.compare_digest(batch.prev, wire.DATA_GENESIS)
    if s == 1 and not is_genesis:
        j.worse(trust.SOURCED_CONTRAINDICATED, "chain-genesis: batch 1 does not start from the genesis digest")
    elif s > 1 and is_genesis:
        j.worse(trust.SOURCED_CONTRAINDICATED, f"chain-genesis: batch {s} carries the genesis digest")
    if chain is None or b > chain.bootcount:  # first batch after enrolment, or a new boot
        if chain is not None:
            _check_previous_boot(batch, chain, gap, j)
        if s > 1:
            j.worse(gap, f"data-gap: batches 1..{s - 1} of boot {b} were not received")
        return ChainState(b, s, batch.digest, batch.digest if s == 1 else None)
    if b < chain.bootcount:
        j.worse(trust.SOURCED_UNKNOWN, f"data-late: batch {s} of boot {b} arrived after boot {chain.bootcount}",
                republish=False)
        return None
    if s == chain.seq + 1:
        if not hmac.compare_digest(batch.prev, chain.head):
            j.worse(trust.SOURCED_CONTRAINDICATED, f"chain-broken: batch {s} does not link to batch {chain.seq}")
        return ChainState(b, s, batch.digest, chain.genesis)
    if s > chain.seq + 1:
        j.worse(gap, f"data-gap: batches {chain.seq + 1}..{s - 1} of boot {b} were not received")
        return ChainState(b, s, batch.digest, chain.genesis)
    if s == 1 and is_genesis and chain.genesis is not None:
        j.worse(trust.SOURCED_CONTRAINDICATED, f"chain-restart: a second chain began in boot {b} without a reboot")
    elif s == chain.seq:
        j.worse(trust.SOURCED_CONTRAINDICATED, f"chain-fork: a second, different batch {s} of boot {b}")
    else:
        j.worse(trust.SOURCED_UNKNOWN, f"data-late: batch {s} arrived after batch {chain.seq} (out of order)",
                republish=False)
    return None


def _check_previous_boot(batch: DataBatch, chain: ChainState, gap: int, j: _Judgement) -> None:
    """A new boot's first batch may name where the previous boot's chain ended: that catches a cut tail."""
    link = batch.prev_boot
    if link is None or batch.seq != 1:
        return
    if link.bootcount > chain.bootcount:
        j.worse(gap, f"chain-truncated: no batch of boot {link.bootcount} was received")
    elif link.bootcount < chain.bootcount:
        j.worse(trust.SOURCED_CONTRAINDICATED,
                f"chain-inconsistent: previous chain named as boot {link.bootcount}, the hub holds boot "
                f"{chain.bootcount}")
    elif link.seq > chain.seq:
        j.worse(gap, f"chain-truncated: batches {chain.seq + 1}..{link.seq} of boot {link.bootcount} never arrived")
    elif link.seq < chain.seq or not hmac.compare_digest(link.digest, chain.head):
        j.worse(trust.SOURCED_CONTRAINDICATED,
                f"chain-inconsistent: boot {link.bootcount} said to end at batch {link.seq}, "
                f"which is not the batch {chain.seq} the hub holds")


def _check_source(batch: DataBatch, state: DeviceState, j: _Judgement) -> None:
    """Data is only as trustworthy as the firmware that produced it."""
    firmware = trust.tier_of(state.firmware_tier)
    if batch.attestation is None:
        j.worse(trust.SOURCED_UNKNOWN, f"unattested-source: no firmware evidence sent in boot {batch.bootcount} "
                                       "before this batch", republish=False)
    elif batch.attestation[0] != batch.bootcount:
        j.worse(trust.SOURCED_UNKNOWN, f"unattested-source: attestation context is from boot {batch.attestation[0]}, "
                                       f"the batch from boot {batch.bootcount}", republish=False)
    if firmware is Tier.CONTRAINDICATED:
        j.worse(trust.SOURCED_CONTRAINDICATED, "source-contraindicated: the device's firmware verdict is "
                                               "contraindicated", republish=False)
    elif firmware is not Tier.AFFIRMING:
        j.worse(trust.SOURCED_UNKNOWN, f"unattested-source: the device's firmware verdict is {firmware.label}",
                republish=False)


def verified_data(device_id: str, batch: DataBatch, tier: Tier, sourced: int, problems: tuple[str, ...]) -> bytes:
    """The message republished on ``fleet/{id}/verified-data`` (docs/schemes/data.md)."""
    return cbor2.dumps({
        "device": device_id,
        "bootcount": batch.bootcount,
        "seq": batch.seq,
        "verdict": tier.label,
        "sourced-data": sourced,
        "problems": list(problems),
        "digest": batch.digest,
        "records": [[r.time, r.metric, r.value] for r in batch.records],
        "evidence": batch.evidence,
    })
