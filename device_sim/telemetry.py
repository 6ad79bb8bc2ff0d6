"""Telemetry batches: signed, hash-chained data-integrity evidence (profile ``wire.DATA_PROFILE``).

A batch is a COSE_Sign1 (the simulator's own encoder, ``device_sim.cose``) whose signed
payload is the claims map::

    {265: profile, 10: epoch nonce, 256: ueid, 6: iat, 267: bootcount,
     -65580: batch seq, -65581: previous batch digest (32 zero bytes for batch 1),
     -65582: [-16, SHA-256(records)], -65583: [bootcount, evidence seq] or null,
     ? -65584: [previous bootcount, last batch seq, last batch digest]}

and whose unprotected header carries the records themselves, ``{-65585: bstr .cbor
[+ [time, metric, value]]}``. The chain digest of a batch is SHA-256 of its payload bytes;
the chain restarts at each boot, the first batch of a boot naming where the previous
boot's chain ended. Records are deterministic in (device id, bootcount, seq).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from device_sim import cose
from hub import wire

Record = tuple[int, str, int]

_METRICS = {
    "env-sensor": (("temperature_mC", 18_000, 8_000), ("humidity_permille", 300, 400)),
    "smart-meter": (("power_W", 100, 3_000), ("voltage_mV", 228_000, 4_000)),
}
_DEFAULT_METRICS = (("reading", 0, 1_000),)


@dataclass(frozen=True, slots=True)
class ChainLink:
    bootcount: int
    seq: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class Batch:
    """One signed batch: where it sits in the chain, its records and the message bytes."""

    bootcount: int
    seq: int
    digest: bytes
    records: tuple[Record, ...]
    raw: bytes

    @property
    def ref(self) -> tuple[int, int]:
        return (self.bootcount, self.seq)


def make_records(device_id: str, device_class: str, bootcount: int, seq: int, iat: int) -> tuple[Record, ...]:
    """Two readings per metric of the class, deterministic in (device, boot, seq)."""
    out: list[Record] = []
    for n, (metric, base, spread) in enumerate(_METRICS.get(device_class, _DEFAULT_METRICS)):
        for k in range(2):
            h = hashlib.sha256(f"{device_id}/{bootcount}/{seq}/{metric}/{k}".encode()).digest()
            out.append((iat - 1 + k, metric, base + int.from_bytes(h[:4], "big") % spread + n))
    return tuple(out)


def encode_records(records: tuple[Record, ...]) -> bytes:
    return cbor2.dumps([list(r) for r in records])


def with_records(signed: bytes, records_bytes: bytes) -> bytes:
    """Put the records into the unprotected header of a signed COSE_Sign1 (not covered by the signature)."""
    tag = cbor2.loads(signed)
    protected, _, payload, signature = tag.value
    return cbor2.dumps(cbor2.CBORTag(wire.COSE_SIGN1_TAG,
                                     [protected, {wire.DATA_RECORDS: records_bytes}, payload, signature]))


class TelemetryChain:
    """One device's batch chain: sequence numbers, the head digest, the previous boot's end.

    Not thread-safe on its own: ``SimDevice`` calls it under its lock.
    """

    def __init__(self, device_id: str, device_class: str, ueid: bytes, bootcount: int) -> None:
        self.device_id = device_id
        self.device_class = device_class
        self.ueid = ueid
        self.bootcount = bootcount
        self.seq = 0
        self.head = wire.DATA_GENESIS
        self.previous_boot: ChainLink | None = None

    def reboot(self, bootcount: int) -> None:
        """A new boot starts a new chain; the old one's end is remembered (as if kept in flash)."""
        if self.seq > 0:
            self.previous_boot = ChainLink(self.bootcount, self.seq, self.head)
        self.bootcount, self.seq, self.head = bootcount, 0, wire.DATA_GENESIS

    def restart(self) -> None:
        """Start a new chain WITHOUT a reboot (what the hub must flag)."""
        self.seq, self.head = 0, wire.DATA_GENESIS

    def next_batch(self, key: ec.EllipticCurvePrivateKey, nonce: bytes, iat: int,
                   attestation: tuple[int, int] | None) -> Batch:
        """Sign the next batch with ``key`` (the device's current signing key) and advance the head."""
        self.seq += 1
        records = make_records(self.device_id, self.device_class, self.bootcount, self.seq, iat)
        records_bytes = encode_records(records)
        claims: dict[int, object] = {
            wire.EAT_PROFILE: wire.DATA_PROFILE,
            wire.NONCE: nonce,
            wire.UEID: self.ueid,
            wire.IAT: iat,
            wire.BOOTCOUNT: self.bootcount,
            wire.DATA_BATCH_SEQ: self.seq,
            wire.DATA_PREV: self.head,
            wire.DATA_RECORDS_DIGEST: [wire.SHA256, hashlib.sha256(records_bytes).digest()],
            wire.DATA_ATTESTATION: list(attestation) if attestation is not None else None,
        }
        if self.seq == 1 and self.previous_boot is not None:
            link = self.previous_boot
            claims[wire.DATA_PREV_BOOT] = [link.bootcount, link.seq, link.digest]
        payload = cbor2.dumps(claims)
        digest = hashlib.sha256(payload).digest()
        raw = with_records(cose.sign1(payload, key, self.device_id.encode()), records_bytes)
        self.head = digest
        return Batch(self.bootcount, self.seq, digest, records, raw)
