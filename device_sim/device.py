"""One simulated device: its identity, firmware, counters, behaviour profile and logs.

A ``SimDevice`` knows nothing about MQTT: ``make_evidence`` / ``evidence_due`` return
bytes to publish and ``handle_command`` returns what the device did, so unit tests
drive it directly and the fleet only moves bytes. State is guarded by a lock
because MQTT callbacks and the publishing loop run on different threads.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from device_sim import cose, firmware, keys
from device_sim.commands import Epoch, MessageError, Rejection, parse_command
from device_sim.data_profiles import DataOut, DataPlanner, DataProfile
from device_sim.evidence import EvidenceClaims, sign_evidence
from device_sim.records import CommandOutcome, EvidenceKind, EvidenceRecord, Profile
from device_sim.telemetry import TelemetryChain
from hub import wire

Clock = Callable[[], float]
_TAMPERED_PROFILES = frozenset({Profile.TAMPERED, Profile.IGNORES_COMMANDS})
REPLAY_RELEASE_AFTER = 2  # newer evidence published before the withheld one is replayed
REPLAY_WINDOW = 64
"""The hub's default anti-replay window (``Settings.replay_window``): a replay device skips this many sequence
numbers after the one it withholds, so that released it is below the window (a replay), not late."""


def signed_ref(raw: bytes) -> str:
    """``"signed:"`` and the first 16 bytes (hex) of SHA-256 of the evidence's Sig_structure: how the hub names
    signed evidence it could not read by its profile (docs/PROTOCOL.md, "Evidence refs")."""
    try:
        parts = cose.decode_sign1(raw)
    except cose.CoseError:
        return ""
    to_be_signed = cbor2.dumps(["Signature1", parts.protected_bytes, b"", parts.payload])
    return "signed:" + hashlib.sha256(to_be_signed).hexdigest()[:32]


class SimDevice:
    """A simulated attester with deterministic keys and firmware."""

    def __init__(
        self,
        device_id: str,
        device_class: str,
        profile: Profile = Profile.HONEST,
        *,
        seed: str = keys.DEFAULT_SEED,
        version: str | None = None,
        bootcount: int = 1,
        hub_key: cose.VerifyKey | None = None,
        clock: Clock = time.time,
        data_profile: DataProfile = DataProfile.HONEST,
    ) -> None:
        firmware.components(device_class)  # validates the class
        if version is None:
            version = firmware.ROLLBACK_VERSION if profile is Profile.ROLLBACK else firmware.CURRENT_VERSION
        self.release = firmware.release(version)
        self.device_id = device_id
        self.device_class = device_class
        self.profile = profile
        self.ueid = keys.device_ueid(seed, device_id)
        self.enrolled_key = keys.device_private_key(seed, device_id)
        self._signing_key = keys.forged_private_key(seed, device_id) if profile is Profile.FORGED else self.enrolled_key
        self._measurements = firmware.measurements(device_class, version,
                                                  tampered=profile in _TAMPERED_PROFILES)
        self.hub_key = hub_key
        self._clock = clock
        self._lock = threading.Lock()
        self._bootcount = bootcount
        self._seq = 0
        self._epoch: Epoch | None = None
        self._quarantined = False
        self._last_command_seq: int | None = None
        self._acknowledged: set[tuple[int, int]] = set()
        self._answered_challenges: set[bytes] = set()
        self._remediations: list[str] = []
        self._evidence_log: list[EvidenceRecord] = []
        self._command_log: list[CommandOutcome] = []
        self._resent: dict[tuple[int, int], int] = {}
        self._last_sent: dict[tuple[int, int], float] = {}
        self._withheld: EvidenceRecord | None = None
        self._replayed = False
        self.data_profile = data_profile
        self._telemetry = TelemetryChain(device_id, device_class, self.ueid, bootcount)
        self._planner = DataPlanner(data_profile)
        self._data_log: list[DataOut] = []
        self._attested: tuple[int, int] | None = None  # (bootcount, seq) of the last firmware evidence

    def __repr__(self) -> str:
        return f"SimDevice({self.device_id!r}, {self.profile.value}, {self.release.version})"

    def adopt_key(self, key: ec.EllipticCurvePrivateKey) -> None:
        """Sign from now on with ``key`` (after the hub affirmed a key rotation to it)."""
        with self._lock:
            self.enrolled_key = key
            if self.profile is not Profile.FORGED:
                self._signing_key = key

    # --- read-only views ---------------------------------------------------------
    @property
    def version(self) -> str:
        return self.release.version

    @property
    def public_key_pem(self) -> bytes:
        """The ENROLLED public key (for a forged device too: it signs with another one)."""
        return keys.public_key_pem(self.enrolled_key)

    @property
    def bootcount(self) -> int:
        return self._bootcount

    @property
    def quarantined(self) -> bool:
        return self._quarantined

    @property
    def epoch(self) -> Epoch | None:
        return self._epoch

    @property
    def last_command_seq(self) -> int | None:
        return self._last_command_seq

    @property
    def acknowledged(self) -> frozenset[tuple[int, int]]:
        with self._lock:
            return frozenset(self._acknowledged)

    @property
    def remediations(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._remediations)

    @property
    def evidence_log(self) -> tuple[EvidenceRecord, ...]:
        with self._lock:
            return tuple(self._evidence_log)

    @property
    def command_log(self) -> tuple[CommandOutcome, ...]:
        with self._lock:
            return tuple(self._command_log)

    def unacknowledged(self) -> tuple[EvidenceRecord, ...]:
        """Published evidence whose receipt has not arrived (yet)."""
        with self._lock:
            return tuple(r for r in self._evidence_log if r.ref not in self._acknowledged)

    # --- lifecycle ---------------------------------------------------------------
    def set_epoch(self, epoch: Epoch) -> None:
        with self._lock:
            self._epoch = epoch

    def reboot(self) -> None:
        """A new boot: bootcount + 1, the evidence counter starts again at 1."""
        with self._lock:
            self._reboot_locked()

    def _reboot_locked(self) -> None:
        """``reboot`` for a caller that holds ``self._lock`` (remediation reboots inside a command)."""
        nonce = self._epoch.nonce if self._epoch is not None else None
        self._data_log += self._planner.before_reboot(self._telemetry, self._signing_key, nonce,
                                                      int(self._clock()), self._attested)
        self._bootcount += 1
        self._seq = 0
        self._telemetry.reboot(self._bootcount)

    # --- evidence ----------------------------------------------------------------
    def make_evidence(self, nonce: bytes, *, kind: EvidenceKind = EvidenceKind.EPOCH) -> bytes:
        """Sign the next evidence (seq + 1) carrying ``nonce`` and log it as published."""
        with self._lock:
            return self._make(nonce, kind).raw

    def evidence_due(self) -> list[bytes]:
        """What to publish this round: fresh evidence with the epoch nonce (none before an
        epoch is known) and, for a replay device once it is due, the withheld stale one."""
        with self._lock:
            if self._epoch is None:
                return []
            out = [self._make(self._epoch.nonce, EvidenceKind.EPOCH).raw]
            stale = self._take_withheld()
            if stale is not None:
                out.append(stale.raw)
            return out

    # --- telemetry (device_sim.telemetry, device_sim.data_profiles) ---------------
    def data_due(self) -> list[DataOut]:
        """The next telemetry batch and what becomes of it: none before an epoch is known or before
        firmware evidence was sent in this boot, none once quarantined (unless the profile ignores it)."""
        with self._lock:
            if self._epoch is None or self._attested is None or self._attested[0] != self._bootcount:
                return []
            if self._quarantined and self.data_profile is not DataProfile.IGNORES_QUARANTINE:
                return []
            out = self._planner.next(self._telemetry, self._signing_key, self._epoch.nonce, int(self._clock()),
                                     self._attested)
            self._data_log += out
            return out

    @property
    def data_log(self) -> tuple[DataOut, ...]:
        """Every batch signed, with what became of it (published, late, replayed, intercepted, lost)."""
        with self._lock:
            return tuple(self._data_log)

    def _sign(self, nonce: bytes, seq: int, now: float, kind: EvidenceKind) -> EvidenceRecord:
        claims = EvidenceClaims(
            device_class=self.device_class,
            ueid=self.ueid,
            nonce=nonce,
            bootcount=self._bootcount,
            seq=seq,
            iat=int(now),
            sw_name=firmware.sw_name(self.device_class),
            sw_version=self.release.version,
            measurements=self._measurements,
        )
        raw = sign_evidence(claims, self._signing_key, self.device_id)
        return EvidenceRecord(seq, self._bootcount, nonce, int(now), now, kind, raw)

    def _make(self, nonce: bytes, kind: EvidenceKind) -> EvidenceRecord:
        now = self._clock()
        self._seq += 1
        record = self._sign(nonce, self._seq, now, kind)
        self._evidence_log.append(record)
        self._attested = record.ref
        if self.profile is Profile.REPLAY and self._withheld is None and not self._replayed:
            self._seq += 1
            self._withheld = self._sign(nonce, self._seq, now, EvidenceKind.REPLAY)
            self._seq += REPLAY_WINDOW - 1  # its next evidence is a whole window above the withheld one
        return record

    def _take_withheld(self) -> EvidenceRecord | None:
        withheld = self._withheld
        if withheld is None:
            return None
        newer = sum(1 for r in self._evidence_log if r.bootcount == withheld.bootcount and r.seq > withheld.seq)
        if newer < REPLAY_RELEASE_AFTER:
            return None
        self._withheld = None
        self._replayed = True
        record = EvidenceRecord(
            withheld.seq, withheld.bootcount, withheld.nonce, withheld.iat, self._clock(), withheld.kind, withheld.raw
        )
        self._evidence_log.append(record)
        return record

    def resend_due(self, older_than: float, max_resends: int = 3, *, backoff: float | None = None,
                   max_wait: float = 30.0) -> list[bytes]:
        """Unacknowledged evidence published more than ``older_than`` seconds ago, to send
        again (the same bytes: the hub is idempotent), at most ``max_resends`` times each.

        With ``backoff``, the k-th re-send waits ``older_than * backoff**k`` seconds (at most
        ``max_wait``) after the previous send instead of ``older_than`` after the first."""
        with self._lock:
            now = self._clock()
            due = []
            for r in self._evidence_log:
                count = self._resent.get(r.ref, 0)
                if r.ref in self._acknowledged or count >= max_resends:
                    continue
                if backoff is None:
                    ready = r.time <= now - older_than
                else:
                    ready = now - self._last_sent.get(r.ref, r.time) >= min(max_wait, older_than * backoff**count)
                if ready:
                    due.append(r)
            for record in due:
                self._resent[record.ref] = self._resent.get(record.ref, 0) + 1
                self._last_sent[record.ref] = now
            return [r.raw for r in due]

    @property
    def resent(self) -> int:
        """How many times evidence was re-sent for want of a receipt."""
        with self._lock:
            return sum(self._resent.values())

    def handle_result(self, raw: bytes) -> bool:
        """An attestation result on ``fleet/{id}/result`` is the receipt of the evidence it names.

        The hub publishes a result only after the verdict is committed, so a result that
        verifies with the hub key, is about this device and names ``"{bootcount}:{seq}"``, or the
        ``"signed:"`` ref of evidence it holds (docs/PROTOCOL.md#receipts), acknowledges that
        evidence. Anything else is ignored (False)."""
        if self.hub_key is None:
            return False
        try:
            payload = cose.loads_exact(cose.verify_sign1(raw, self.hub_key).payload)
        except cose.CoseError:
            return False
        if not isinstance(payload, Mapping) or payload.get(wire.SUB) != self.device_id:
            return False
        ref = payload.get(wire.RES_EVIDENCE_REF)
        if not isinstance(ref, str):
            return False
        if ref.startswith("signed:"):  # evidence the hub could not read by its profile: named by what was signed
            with self._lock:
                held = [r for r in self._evidence_log if r.ref not in self._acknowledged and signed_ref(r.raw) == ref]
                self._acknowledged.update(r.ref for r in held)
            return bool(held)
        boot, _, seq = ref.partition(":")
        if not all(part.isascii() and part.isdigit() and len(part) <= 20 for part in (boot, seq)):
            return False  # "raw:...": evidence that did not authenticate names nothing the device holds
        with self._lock:
            self._acknowledged.add((int(boot), int(seq)))
        return True

    # --- commands ----------------------------------------------------------------
    def handle_command(self, raw: bytes) -> CommandOutcome:
        """Verify and apply one command message; every outcome is logged."""
        with self._lock:
            outcome = self._handle(raw)
            self._command_log.append(outcome)
            return outcome

    def _handle(self, raw: bytes) -> CommandOutcome:
        now = self._clock()
        if self.hub_key is None:
            return CommandOutcome(False, now, rejection=Rejection.FORGED, detail="no hub key configured")
        try:
            cmd = parse_command(raw, self.hub_key)
        except MessageError as exc:
            return CommandOutcome(False, now, rejection=exc.reason, detail=exc.detail)

        def reject(reason: Rejection, detail: str) -> CommandOutcome:
            return CommandOutcome(False, now, command=cmd, rejection=reason, detail=detail)

        if cmd.sub != self.device_id:
            return reject(Rejection.MISADDRESSED, f"addressed to {cmd.sub!r}")
        if cmd.exp <= now:
            return reject(Rejection.EXPIRED, f"expired at {cmd.exp}")
        if cmd.state_changing:
            if self._last_command_seq is not None and cmd.seq <= self._last_command_seq:
                return reject(Rejection.REPLAYED, f"seq {cmd.seq} <= last applied {self._last_command_seq}")
            self._last_command_seq = cmd.seq
        evidence: bytes | None = None
        if self.profile is Profile.IGNORES_COMMANDS and cmd.state_changing:
            return CommandOutcome(True, now, command=cmd, detail="verified, then ignored (compromised device)")
        if cmd.type == wire.COMMAND_QUARANTINE:
            self._quarantined = True
        elif cmd.type == wire.COMMAND_RELEASE:
            self._quarantined = False
        elif cmd.type == wire.COMMAND_REMEDIATE:
            try:
                evidence = self._remediate(cmd.release_name)
            except firmware.UnknownFirmwareError as exc:
                return reject(Rejection.MALFORMED, str(exc))
        elif cmd.type == wire.COMMAND_RECEIPT:
            self._acknowledged.update(cmd.receipts)
        elif cmd.type == wire.COMMAND_CHALLENGE and cmd.nonce is not None:
            if cmd.nonce in self._answered_challenges:
                return reject(Rejection.REPLAYED, "challenge nonce already answered")
            self._answered_challenges.add(cmd.nonce)
            evidence = self._make(cmd.nonce, EvidenceKind.CHALLENGE).raw
        return CommandOutcome(True, now, command=cmd, evidence=evidence)

    def _remediate(self, release_name: str | None) -> bytes | None:
        """Install the named release's genuine images, reboot and attest (the caller holds the lock).

        A remediate command comes with a quarantine, so the device stays quarantined until released.
        Returns fresh evidence to publish when an epoch nonce is known.
        """
        self._remediations.append(release_name or "")
        self._quarantined = True
        if release_name is None:
            return None
        self.release = firmware.release(release_name)
        self._install(release_name)
        self._reboot_locked()
        if self._epoch is None:
            return None
        return self._make(self._epoch.nonce, EvidenceKind.EPOCH).raw

    def _install(self, version: str) -> None:
        """Switch to the genuine images of ``version`` (subclasses with other evidence override this)."""
        self._measurements = firmware.measurements(self.device_class, version)

    # --- report ------------------------------------------------------------------
    def report(self) -> dict[str, object]:
        with self._lock:
            return {
                "device_id": self.device_id,
                "device_class": self.device_class,
                "profile": self.profile.value,
                "version": self.release.version,
                "svn": self.release.svn,
                "ueid": self.ueid.hex(),
                "bootcount": self._bootcount,
                "quarantined": self._quarantined,
                "last_command_seq": self._last_command_seq,
                "acknowledged": sorted([list(ref) for ref in self._acknowledged]),
                "remediations": list(self._remediations),
                "evidence": [r.to_json() for r in self._evidence_log],
                "commands": [c.to_json() for c in self._command_log],
                "data_profile": self.data_profile.value,
                "data": [{"bootcount": d.batch.bootcount, "seq": d.batch.seq, "kind": d.kind.value}
                         for d in self._data_log],
            }
