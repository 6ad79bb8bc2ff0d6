"""Key rotation: a device proves possession of its new key with its old one.

The message is a COSE_Sign1 signed by the enrolled (old) key whose payload
carries the new key's SubjectPublicKeyInfo and a proof: a second COSE_Sign1,
signed by the new key, over ``[device id, nonce, SHA-256(old SPKI)]``. The
proof binds the new key to this device, this fresh nonce and the key it
replaces, so neither an old proof nor another device's can be replayed. The
orchestrator checks the nonce like any evidence; on an affirming verdict the
device's key is replaced and its key version advanced (evidence verified with
the old key in flight is then refused as "key-rotated").
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from hub import wire
from hub.crypto.cbor_strict import CborError, loads_strict
from hub.crypto.cose import CoseError, decode_sign1, verify_sign1
from hub.crypto.keys import PublicKey, allowed_algorithms, public_pem
from hub.reference import trust
from hub.reference.trust import TrustVector
from hub.schemes.base import Appraisal, AppraisalInputs, Claims, EvidenceError, TrustAnchor
from hub.schemes.claims import require, require_nonce
from hub.schemes.firmware import spki, verify_cose_evidence

MAX_BYTES = 4096


class KeyRotationScheme:
    name = "key-rotation"
    media_types = frozenset({wire.KEY_ROTATION_MEDIA_TYPE})
    topic_leaf = wire.EVIDENCE  # chosen by its Content Type on the evidence topic
    attests_platform = False

    def verify(self, raw: bytes, anchor: TrustAnchor) -> Claims:
        claims = verify_cose_evidence(raw, anchor, MAX_BYTES)
        if claims.get(wire.EAT_PROFILE) != wire.KEY_ROTATION_PROFILE:
            raise EvidenceError("wrong-profile", "not a key-rotation message", authenticated=True)
        assert anchor.public_key is not None or anchor.ca_certificates
        nonce = require_nonce(claims, wire.NONCE)
        new_spki = require(claims, wire.ROT_NEW_KEY, bytes, "new key")
        proof = require(claims, wire.ROT_PROOF, bytes, "proof")
        try:
            new_key = serialization.load_der_public_key(new_spki)
        except ValueError as exc:
            raise EvidenceError("bad-claim", f"new key is not a SubjectPublicKeyInfo: {exc}",
                                authenticated=True) from exc
        if not isinstance(new_key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)) or not allowed_algorithms(
            new_key
        ):
            raise EvidenceError("bad-claim", "new key must be EC P-256/384/521 or Ed25519", authenticated=True)
        if anchor.public_key is not None and hmac.compare_digest(spki(new_key), spki(anchor.public_key)):
            raise EvidenceError("bad-claim", "the new key is the current key", authenticated=True)
        old_hash = hashlib.sha256(spki(anchor.public_key)).digest() if anchor.public_key else b""
        _check_proof(proof, new_key, anchor.device_id, nonce, old_hash)
        request_digest = hashlib.sha256(nonce + new_spki + proof).hexdigest()
        return Claims(self.name, anchor.device_id, f"keyrot:{request_digest[:32]}", None, nonce,
                      public_pem(new_key))

    def appraise(self, claims: Claims, inputs: AppraisalInputs) -> Appraisal:
        assert isinstance(claims.body, str)
        vector = TrustVector(instance_identity=trust.IDENTITY_TRUSTWORTHY)
        return Appraisal(vector, (), state_updates={"public_key_pem": claims.body})


def _check_proof(proof: bytes, new_key: PublicKey, device_id: str, nonce: bytes, old_hash: bytes) -> None:
    try:
        message = decode_sign1(proof, max_bytes=1024)
        verify_sign1(message, new_key)
        body = loads_strict(message.payload, max_bytes=512, max_depth=2)
    except (CoseError, CborError) as exc:
        raise EvidenceError("bad-proof", f"proof of possession of the new key: {exc}", authenticated=True) from exc
    if not isinstance(body, list) or len(body) != 3:
        raise EvidenceError("bad-proof", "proof payload must be [device id, nonce, old key hash]", authenticated=True)
    same = (
        body[0] == device_id
        and isinstance(body[1], bytes) and hmac.compare_digest(body[1], nonce)
        and isinstance(body[2], bytes) and hmac.compare_digest(body[2], old_hash)
    )
    if not same:
        raise EvidenceError("bad-proof", "proof is for another device, nonce or key", authenticated=True)
