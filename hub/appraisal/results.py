"""Reading a signed attestation result back: ``attest-hub result verify`` and the console's device page.

A result is a COSE_Sign1 (RFC 9052 §4.2) over an EAR claims set
(draft-ietf-rats-ear, CBOR serialisation) signed by the hub key. This checks
the signature with the hub's public key, then decodes the claims under the
same strict CBOR limits as evidence, and names each field readably. It is
what a relying party does with the bytes of ``GET /v1/devices/{id}/result``.
``result_claims`` gives the same claims back as ``ResultClaims``, for that
endpoint's JWT form (``Accept: application/eat+jwt``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub import wire
from hub.appraisal.messages import ResultClaims
from hub.crypto.cbor_strict import CborError, loads_strict
from hub.crypto.cose import CoseError, decode_sign1, verify_sign1
from hub.crypto.keys import PublicKey
from hub.reference.trust import Tier, TrustVector

_VECTOR_NAMES = [f.replace("_", "-") for f in TrustVector.__dataclass_fields__]


class ResultError(ValueError):
    """The bytes are not a result signed by this hub; the message says why."""


@dataclass(frozen=True, slots=True)
class ResultView:
    """A verified result, readably: status labels per submodule, the trust vector by claim name."""

    device_id: str
    issued_at: int
    profile: str
    submods: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    evidence_ref: str = ""
    manifest_ref: str | None = None
    policy_ref: str = ""
    action: str = ""
    nonce: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "issued_at": self.issued_at, "profile": self.profile,
                "submods": self.submods, "problems": list(self.problems), "evidence_ref": self.evidence_ref,
                "manifest_ref": self.manifest_ref, "policy_ref": self.policy_ref, "action": self.action,
                "nonce": self.nonce, "signature": "verified"}


def verify_result(raw: bytes, hub_key: PublicKey) -> ResultView:
    """Check ``raw`` is a COSE_Sign1 EAR signed by ``hub_key`` and decode it; ResultError otherwise."""
    claims = _verified_claims(raw, hub_key)
    submods_raw = claims.get(wire.SUBMODS)
    if not isinstance(submods_raw, dict) or not submods_raw:
        raise ResultError("the result has no submodule appraisal")
    submods: dict[str, dict[str, Any]] = {}
    for name, appraisal in submods_raw.items():
        if not isinstance(name, str) or not isinstance(appraisal, dict):
            raise ResultError("a submodule appraisal is malformed")
        status = appraisal.get(wire.EAR_STATUS)
        vector = appraisal.get(wire.EAR_TRUST_VECTOR, {})
        if status not in set(Tier) or not isinstance(vector, dict):
            raise ResultError(f"submodule {name}: malformed status or trust vector")
        submods[name] = {
            "status": Tier(status).label,
            "trust_vector": {_VECTOR_NAMES[k]: v for k, v in sorted(vector.items())
                             if isinstance(k, int) and 0 <= k < len(_VECTOR_NAMES)},
            "policy": appraisal.get(wire.EAR_POLICY_ID),
        }
    problems = claims.get(wire.RES_PROBLEMS, [])
    nonce = claims.get(wire.NONCE)
    iat = claims.get(wire.IAT)
    return ResultView(
        device_id=str(claims.get(wire.SUB, "")), issued_at=iat if isinstance(iat, int) else 0,
        profile=wire.EAR_PROFILE, submods=submods,
        problems=tuple(str(p) for p in problems) if isinstance(problems, list) else (),
        evidence_ref=str(claims.get(wire.RES_EVIDENCE_REF, "")),
        manifest_ref=claims.get(wire.RES_MANIFEST_REF) if isinstance(claims.get(wire.RES_MANIFEST_REF), str) else None,
        policy_ref=str(claims.get(wire.RES_POLICY_REF, "")), action=str(claims.get(wire.RES_ACTION, "")),
        nonce=nonce.hex() if isinstance(nonce, bytes) else None,
    )


def result_claims(raw: bytes, hub_key: PublicKey) -> ResultClaims:
    """The claims of a stored result (COSE_Sign1 EAR signed by ``hub_key``) as ``ResultClaims``, so the
    same result can be given in the JWT serialization (``sign_result_jwt``); its ``payload()`` is the
    signed payload again, byte for byte. ResultError if the bytes do not verify or are not one appraisal
    in the hub's result shape (docs/PROTOCOL.md#results)."""
    claims = _verified_claims(raw, hub_key)
    submods = claims.get(wire.SUBMODS)
    if not isinstance(submods, dict) or len(submods) != 1:
        raise ResultError("the result does not hold exactly one submodule appraisal")
    [(scheme, appraisal)] = submods.items()
    appraisal = appraisal if isinstance(appraisal, dict) else {}
    vector = appraisal.get(wire.EAR_TRUST_VECTOR, {})
    status = appraisal.get(wire.EAR_STATUS)
    iat, sub, problems = claims.get(wire.IAT), claims.get(wire.SUB), claims.get(wire.RES_PROBLEMS, [])
    manifest, nonce = claims.get(wire.RES_MANIFEST_REF), claims.get(wire.NONCE)
    evidence_ref, policy_ref, action = (claims.get(k) for k in (wire.RES_EVIDENCE_REF, wire.RES_POLICY_REF,
                                                                 wire.RES_ACTION))
    if (not isinstance(scheme, str) or type(iat) is not int or not isinstance(sub, str) or status not in set(Tier)
            or not isinstance(vector, dict)
            or not all(type(k) is int and 0 <= k < len(_VECTOR_NAMES) and type(v) is int for k, v in vector.items())
            or not isinstance(problems, list) or not all(isinstance(p, str) for p in problems)
            or not isinstance(evidence_ref, str) or not isinstance(policy_ref, str) or not isinstance(action, str)
            or not (manifest is None or isinstance(manifest, str)) or not (nonce is None or isinstance(nonce, bytes))):
        raise ResultError("the result's claims are not in the hub's result shape")
    return ResultClaims(
        device_id=sub, scheme=scheme, issued_at=iat, tier=Tier(status),
        trust_vector=TrustVector.from_json({_VECTOR_NAMES[k]: v for k, v in vector.items()}),
        problems=tuple(problems), evidence_ref=evidence_ref, manifest_ref=manifest, policy_ref=policy_ref,
        action=action, nonce=nonce,
    )


def _verified_claims(raw: bytes, hub_key: PublicKey) -> dict[Any, Any]:
    try:
        message = decode_sign1(raw)
        verify_sign1(message, hub_key)
        claims = loads_strict(message.payload, max_bytes=len(message.payload), max_depth=6)
    except (CoseError, CborError) as exc:
        raise ResultError(f"not a result signed by this hub: {exc}") from exc
    if not isinstance(claims, dict) or claims.get(wire.EAT_PROFILE) != wire.EAR_PROFILE:
        raise ResultError("the signed payload is not an EAR claims set (eat_profile differs)")
    return claims
