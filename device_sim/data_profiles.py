"""Data profiles: how a simulated device's telemetry goes wrong (or does not).

Each device has a firmware ``Profile`` (records.py) and a ``DataProfile``. The
``DataPlanner`` turns "one more batch is due" into what actually leaves the device:

* honest: every batch, in order;
* mitm: batches 2, 5, 8, ... are intercepted on the way: a man-in-the-middle (the
  fleet's separate MITM publisher) alters one record and forwards the altered copy on
  the device's data topic; the genuine copy never arrives;
* drop: batch 3 of each boot is lost (a gap);
* replay: batch 2 is published a second time, right after batch 3;
* reorder: batch 3 is held back and published after batch 4;
* restart: after batch 3 the device starts a new chain without rebooting;
* truncate: on a reboot, the last batch of the old boot is lost (a cut tail);
* ignores-quarantine: keeps publishing data after being quarantined (the others stop).

Mix names (``device_sim.profiles``): ``data-<profile>``; ``data-ignores-quarantine``
runs tampered firmware, so the hub has a reason to quarantine it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Final

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from device_sim.records import Profile
from device_sim.telemetry import Batch, TelemetryChain
from hub import wire


class DataProfile(StrEnum):
    HONEST = "honest"
    MITM = "mitm"
    DROP = "drop"
    REPLAY = "replay"
    REORDER = "reorder"
    RESTART = "restart"
    TRUNCATE = "truncate"
    IGNORES_QUARANTINE = "ignores-quarantine"


DATA_MIX_NAMES: Final = MappingProxyType({
    f"data-{p.value}": (Profile.TAMPERED if p is DataProfile.IGNORES_QUARANTINE else Profile.HONEST, p)
    for p in DataProfile
})

MITM_EVERY = 3  # batches 2, 5, 8, ... of a mitm device are altered in flight
AFFECTED_SEQ = 3  # the batch the drop / replay / reorder / restart profiles act on


class DataKind(StrEnum):
    BATCH = "batch"  # published in order
    LATE = "late"  # published after a newer batch (reorder)
    REPLAYED = "replayed"  # an earlier batch published again
    INTERCEPTED = "intercepted"  # handed to the man in the middle instead of the broker
    LOST = "lost"  # signed and chained, never published (drop, reorder until released, truncate)


@dataclass(frozen=True, slots=True)
class DataOut:
    batch: Batch
    kind: DataKind

    @property
    def to_broker(self) -> bool:
        """Published by the device itself (intercepted batches go through the MITM)."""
        return self.kind in (DataKind.BATCH, DataKind.LATE, DataKind.REPLAYED)


@dataclass(slots=True)
class DataPlanner:
    profile: DataProfile
    _recent: dict[tuple[int, int], Batch] = field(default_factory=dict)
    _withheld: Batch | None = None
    _restarted: set[int] = field(default_factory=set)

    def next(self, chain: TelemetryChain, key: ec.EllipticCurvePrivateKey, nonce: bytes, iat: int,
             attestation: tuple[int, int]) -> list[DataOut]:
        """Sign the next batch and say what becomes of it (and of any batch held back)."""
        p = self.profile
        if p is DataProfile.RESTART and chain.seq == AFFECTED_SEQ and chain.bootcount not in self._restarted:
            self._restarted.add(chain.bootcount)
            chain.restart()
        batch = chain.next_batch(key, nonce, iat, attestation)
        self._recent = {k: v for k, v in self._recent.items() if k[0] == batch.bootcount and k[1] >= batch.seq - 2}
        self._recent[batch.ref] = batch
        if p is DataProfile.MITM and batch.seq % MITM_EVERY == 2:
            return [DataOut(batch, DataKind.INTERCEPTED)]
        if p in (DataProfile.DROP, DataProfile.REORDER) and batch.seq == AFFECTED_SEQ:
            if p is DataProfile.REORDER:
                self._withheld = batch
            return [DataOut(batch, DataKind.LOST)]
        out = [DataOut(batch, DataKind.BATCH)]
        if p is DataProfile.REORDER and self._withheld is not None:
            out.append(DataOut(self._withheld, DataKind.LATE))
            self._withheld = None
        earlier = self._recent.get((batch.bootcount, batch.seq - 1))
        if p is DataProfile.REPLAY and batch.seq == AFFECTED_SEQ and earlier is not None:
            out.append(DataOut(earlier, DataKind.REPLAYED))
        return out

    def before_reboot(self, chain: TelemetryChain, key: ec.EllipticCurvePrivateKey, nonce: bytes | None, iat: int,
                      attestation: tuple[int, int] | None) -> list[DataOut]:
        """truncate: one last batch is signed (so the device's chain ends there) and lost."""
        if self.profile is not DataProfile.TRUNCATE or nonce is None or chain.seq == 0:
            return []
        return [DataOut(chain.next_batch(key, nonce, iat, attestation), DataKind.LOST)]


def alter_record(raw: bytes) -> bytes:
    """The man in the middle: add 1 to the value of the first record; signature and digest untouched."""
    tag = cbor2.loads(raw)
    protected, unprotected, payload, signature = tag.value
    records = cbor2.loads(unprotected[wire.DATA_RECORDS])
    records[0][2] += 1
    altered = {**unprotected, wire.DATA_RECORDS: cbor2.dumps(records)}
    return cbor2.dumps(cbor2.CBORTag(wire.COSE_SIGN1_TAG, [protected, altered, payload, signature]))
