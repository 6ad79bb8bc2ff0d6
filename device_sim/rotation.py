"""Key rotation as a device does it: prove possession of the new key with the old one.

``rotation_message`` builds the COSE_Sign1 (signed by the old key) described in
docs/PROTOCOL.md; the proof inside is a COSE_Sign1 by the new key over
``[device id, nonce, SHA-256(old SubjectPublicKeyInfo)]``.
"""

from __future__ import annotations

import hashlib

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from device_sim import cose, keys
from hub import wire


def spki(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def next_key(seed: str, device_id: str, generation: int) -> ec.EllipticCurvePrivateKey:
    """The device's key of the given generation (1 = the enrolled key), derived like the others."""
    if generation <= 1:
        return keys.device_private_key(seed, device_id)
    return keys.derive_key(seed, f"device-key-{generation}", device_id)


def rotation_message(device_id: str, old_key: ec.EllipticCurvePrivateKey, new_key: ec.EllipticCurvePrivateKey,
                     nonce: bytes) -> bytes:
    kid = device_id.encode()
    proof = cose.sign1(cbor2.dumps([device_id, nonce, hashlib.sha256(spki(old_key)).digest()]), new_key, kid)
    payload = cbor2.dumps(
        {
            wire.EAT_PROFILE: wire.KEY_ROTATION_PROFILE,
            wire.NONCE: nonce,
            wire.ROT_NEW_KEY: spki(new_key),
            wire.ROT_PROOF: proof,
        }
    )
    return cose.sign1(payload, old_key, kid)
