"""What the hub signs and publishes: commands, attestation results (EAR), epochs.

Results follow the EAR profile ``tag:github.com,2023:veraison/ear`` (draft-fv-rats-ear-02, the profile
the veraison/ear libraries and ``arc`` implement): one appraisal per evidence scheme under ``submods``,
``ear.appraisal-policy-id`` (1003) a single text string, ``ear.verifier-id`` (1004) a map with developer
under 0 and build under 1. The same claims go out as a CWT (COSE_Sign1, ``sign_result``) and as a
JWT (``ResultClaims.json_claims`` signed by ``hub.crypto.jws``); docs/PROTOCOL.md#results lists both.
What a result echoes from evidence is bounded: the nonce only if it is 8..64 bytes (RFC 9711 4.1), at
most ``MAX_PROBLEMS`` problems of at most ``MAX_PROBLEM_CHARS`` characters, a reference of at most
``MAX_REF_CHARS``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from hub import wire
from hub.crypto.cose import sign1
from hub.crypto.jws import sign_jws
from hub.crypto.keys import PrivateKey
from hub.reference.trust import Tier, TrustVector

VERIFIER_BUILD = "fleet-attestation-hub 0.1.0"
VERIFIER_DEVELOPER = "fleet-attest.org"
MAX_PROBLEMS = 16
MAX_PROBLEM_CHARS = 200
MAX_REF_CHARS = 160
JSON_NONCE_MAX_CHARS = 74  # eat_nonce in JSON is tstr .size (10..74) (RFC 9711 4.1)


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

    @property
    def echoed_nonce(self) -> bytes | None:
        """The nonce the result echoes: the evidence's, if it is a valid eat_nonce (8..64 bytes), else none."""
        if self.nonce is None or not wire.NONCE_MIN_SIZE <= len(self.nonce) <= wire.NONCE_MAX_SIZE:
            return None
        return self.nonce

    @property
    def bounded_problems(self) -> list[str]:
        """At most MAX_PROBLEMS problems of at most MAX_PROBLEM_CHARS characters; the last says what was cut."""
        shown = [_clip(p, MAX_PROBLEM_CHARS) for p in self.problems[:MAX_PROBLEMS]]
        if len(self.problems) > MAX_PROBLEMS:
            shown[-1] = f"... and {len(self.problems) - MAX_PROBLEMS + 1} more problems"
        return shown

    def payload(self) -> bytes:
        """The CWT claims (CBOR map): EAR claims by integer key, then this hub's private-use extensions."""
        appraisal: dict[int, object] = {
            wire.EAR_STATUS: int(self.tier),
            wire.EAR_TRUST_VECTOR: self.trust_vector.to_cbor(),
            wire.EAR_POLICY_ID: self.policy_ref,
        }
        nonce = self.echoed_nonce
        extra = {wire.NONCE: nonce} if nonce is not None else {}
        return cbor2.dumps(
            {
                **extra,
                wire.EAT_PROFILE: wire.EAR_PROFILE,
                wire.IAT: self.issued_at,
                wire.SUB: self.device_id,
                wire.EAR_VERIFIER_ID: {
                    wire.EAR_VERIFIER_DEVELOPER: VERIFIER_DEVELOPER,
                    wire.EAR_VERIFIER_BUILD: VERIFIER_BUILD,
                },
                wire.SUBMODS: {self.scheme: appraisal},
                wire.RES_PROBLEMS: self.bounded_problems,
                wire.RES_EVIDENCE_REF: _clip(self.evidence_ref, MAX_REF_CHARS),
                wire.RES_MANIFEST_REF: self.manifest_ref,
                wire.RES_POLICY_REF: self.policy_ref,
                wire.RES_ACTION: self.action,
            }
        )

    def json_claims(self) -> dict[str, object]:
        """The same result as JWT claims, with the JSON names of the EAR profile (as veraison/ear reads them):
        ``ear.status`` is the tier's name, the trust vector is keyed by claim name, byte strings are
        base64url without padding. The nonce is left out if its base64url text exceeds 74 characters."""
        appraisal: dict[str, object] = {
            "ear.status": self.tier.label,
            "ear.trustworthiness-vector": self.trust_vector.to_json(),
            "ear.appraisal-policy-id": self.policy_ref,
        }
        claims: dict[str, object] = {
            "eat_profile": wire.EAR_PROFILE,
            "iat": self.issued_at,
            "sub": self.device_id,
            "ear.verifier-id": {"build": VERIFIER_BUILD, "developer": VERIFIER_DEVELOPER},
            "submods": {self.scheme: appraisal},
        }
        nonce = self.echoed_nonce
        if nonce is not None:
            text = base64.urlsafe_b64encode(nonce).rstrip(b"=").decode()
            if len(text) <= JSON_NONCE_MAX_CHARS:
                claims["eat_nonce"] = text
        claims.update({
            wire.RES_JSON_PROBLEMS: self.bounded_problems,
            wire.RES_JSON_EVIDENCE_REF: _clip(self.evidence_ref, MAX_REF_CHARS),
            wire.RES_JSON_MANIFEST_REF: self.manifest_ref,
            wire.RES_JSON_POLICY_REF: self.policy_ref,
            wire.RES_JSON_ACTION: self.action,
        })
        return claims


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def result_from_verdict(row: Mapping[str, Any], nonce: bytes | None = None) -> ResultClaims:
    """The result a stored verdict row was published as: ``iat`` is the time of the appraisal, ``nonce`` the
    evidence's (a verdict row does not keep it). Its payload is byte for byte the first result's."""
    stored_tier = int(row["tier"])
    return ResultClaims(
        device_id=str(row["device_id"]), scheme=str(row["scheme"]),
        trust_vector=TrustVector.from_json(json.loads(row["trust_vector"])),
        tier=Tier(stored_tier) if stored_tier in set(Tier) else Tier.CONTRAINDICATED,
        issued_at=int(row["received_at"]), problems=tuple(json.loads(row["problems"])),
        evidence_ref=str(row["dedup_key"]), manifest_ref=row["manifest_ref"], policy_ref=str(row["policy_ref"]),
        action=str(row["action"]), nonce=nonce,
    )


def sign_result(result: ResultClaims, key: PrivateKey, kid: bytes) -> bytes:
    """The result as a CWT EAR: tagged COSE_Sign1, content type ``application/eat+cwt``. The same claims
    give the same payload bytes; an ECDSA signature differs each time (randomised, the cheaper signing)."""
    return sign1(result.payload(), key, kid=kid, content_type=wire.EAR_MEDIA_TYPE.split(";")[0])


def sign_result_jwt(result: ResultClaims, key: PrivateKey, kid: bytes) -> str:
    """The result as a JWT EAR (RFC 7519 compact JWS; ES256 with the hub's P-256 key, ``typ`` JWT)."""
    return sign_jws(result.json_claims(), key, kid=kid.decode("ascii"))


def epoch_message(epoch: int, nonce: bytes, issued_at: int, key: PrivateKey, kid: bytes) -> bytes:
    payload = cbor2.dumps(
        {wire.EAT_PROFILE: wire.EPOCH_PROFILE, wire.IAT: issued_at, wire.EPOCH_ID: epoch, wire.NONCE: nonce}
    )
    return sign1(payload, key, kid=kid)


def receipts_from(refs: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    return tuple(sorted(set(refs)))
