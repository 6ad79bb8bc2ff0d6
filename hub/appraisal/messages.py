"""What the hub signs and publishes: commands, attestation results (EAR), epochs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cbor2

from hub import wire
from hub.crypto.cose import sign1
from hub.crypto.keys import PrivateKey
from hub.reference.trust import Tier, TrustVector

VERIFIER_BUILD = "fleet-attestation-hub 0.1.0"
VERIFIER_DEVELOPER = "fleet-attest.org"


@dataclass(frozen=True, slots=True)
class Command:
    device_id: str
    kind: str
    seq: int
    issued_at: int
    expires_at: int
    reason: str = ""
    nonce: bytes | None = None
    receipts: tuple[tuple[int, int], ...] = ()
    release_name: str | None = None

    def payload(self) -> bytes:
        claims: dict[int, object] = {
            wire.SUB: self.device_id,
            wire.IAT: self.issued_at,
            wire.EXP: self.expires_at,
            wire.CMD_TYPE: self.kind,
            wire.CMD_SEQ: self.seq,
        }
        if self.reason:
            claims[wire.CMD_REASON] = self.reason
        if self.nonce is not None:
            claims[wire.NONCE] = self.nonce
        if self.receipts:
            claims[wire.CMD_RECEIPTS] = [list(r) for r in self.receipts]
        if self.release_name is not None:
            claims[wire.CMD_RELEASE_NAME] = self.release_name
        return cbor2.dumps(claims)

    def sign(self, key: PrivateKey, kid: bytes) -> bytes:
        return sign1(self.payload(), key, kid=kid)

    @property
    def state_changing(self) -> bool:
        return self.kind in (wire.COMMAND_QUARANTINE, wire.COMMAND_RELEASE, wire.COMMAND_REMEDIATE)


@dataclass(frozen=True, slots=True)
class ResultClaims:
    device_id: str
    scheme: str
    trust_vector: TrustVector
    tier: Tier
    issued_at: int
    problems: tuple[str, ...]
    evidence_ref: str
    manifest_ref: str | None
    policy_ref: str
    action: str
    nonce: bytes | None = None

    def payload(self) -> bytes:
        appraisal: dict[int, object] = {
            wire.EAR_STATUS: int(self.tier),
            wire.EAR_TRUST_VECTOR: self.trust_vector.to_cbor(),
            wire.EAR_POLICY_ID: [self.policy_ref],
        }
        extra = {wire.NONCE: self.nonce} if self.nonce is not None else {}
        return cbor2.dumps(
            {
                **extra,
                wire.EAT_PROFILE: wire.EAR_PROFILE,
                wire.IAT: self.issued_at,
                wire.SUB: self.device_id,
                wire.EAR_VERIFIER_ID: {
                    wire.EAR_VERIFIER_BUILD: VERIFIER_BUILD,
                    wire.EAR_VERIFIER_DEVELOPER: VERIFIER_DEVELOPER,
                },
                wire.SUBMODS: {self.scheme: appraisal},
                wire.RES_PROBLEMS: list(self.problems),
                wire.RES_EVIDENCE_REF: self.evidence_ref,
                wire.RES_MANIFEST_REF: self.manifest_ref,
                wire.RES_POLICY_REF: self.policy_ref,
                wire.RES_ACTION: self.action,
            }
        )


def sign_result(result: ResultClaims, key: PrivateKey, kid: bytes) -> bytes:
    return sign1(result.payload(), key, kid=kid, content_type=wire.EAR_MEDIA_TYPE.split(";")[0])


def epoch_message(epoch: int, nonce: bytes, issued_at: int, key: PrivateKey, kid: bytes) -> bytes:
    payload = cbor2.dumps(
        {wire.EAT_PROFILE: wire.EPOCH_PROFILE, wire.IAT: issued_at, wire.EPOCH_ID: epoch, wire.NONCE: nonce}
    )
    return sign1(payload, key, kid=kid)


def receipts_from(refs: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    return tuple(sorted(set(refs)))
