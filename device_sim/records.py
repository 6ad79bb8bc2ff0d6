"""Values the simulator records: profiles, published evidence, command outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from device_sim.commands import Command, Rejection


class Profile(StrEnum):
    """How a simulated device behaves."""

    HONEST = "honest"  # genuine firmware, enrolled key, fresh nonce, counter in order
    TAMPERED = "tampered"  # application image modified: its digest is in no manifest
    ROLLBACK = "rollback"  # runs release 1.0.0 (svn 1), below the minimum
    REPLAY = "replay"  # withholds a signed evidence, skips a window of seqs, publishes it after two newer ones
    FORGED = "forged"  # signs with a key that is not its enrolled key (kid still its id)
    IGNORES_COMMANDS = "ignores-commands"  # compromised: tampered app, obeys no state command, keeps sending data


class EvidenceKind(StrEnum):
    EPOCH = "epoch"  # periodic, carrying the epoch nonce
    CHALLENGE = "challenge"  # answer to a challenge command, carrying its nonce
    REPLAY = "replay"  # the withheld, stale evidence of a replay device


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    """One evidence a device published (or handed out to be published)."""

    seq: int
    bootcount: int
    nonce: bytes
    iat: int
    time: float
    kind: EvidenceKind
    raw: bytes

    @property
    def ref(self) -> tuple[int, int]:
        """``(bootcount, seq)``: how a receipt names this evidence."""
        return (self.bootcount, self.seq)

    def to_json(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "bootcount": self.bootcount,
            "nonce": self.nonce.hex(),
            "iat": self.iat,
            "time": self.time,
            "kind": self.kind.value,
            "bytes": self.raw.hex(),
        }


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """What a device did with one command message.

    ``evidence`` is set when the device must publish something now (a challenge answer).
    """

    accepted: bool
    time: float
    command: Command | None = None
    rejection: Rejection | None = None
    detail: str = ""
    evidence: bytes | None = None

    @property
    def command_type(self) -> str | None:
        return self.command.type if self.command else None

    def to_json(self) -> dict[str, object]:
        cmd = self.command
        return {
            "time": self.time,
            "accepted": self.accepted,
            "type": cmd.type if cmd else None,
            "seq": cmd.seq if cmd else None,
            "reason": cmd.reason if cmd else None,
            "rejection": self.rejection.value if self.rejection else None,
            "detail": self.detail,
        }
