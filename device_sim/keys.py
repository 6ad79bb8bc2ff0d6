"""Deterministic device keys and UEIDs, derived from a fleet seed and the device id.

``device-sim enrol`` and ``device-sim run`` given the same ``--seed`` agree on every
key without a key store:

    okm    = HKDF-SHA256(ikm = seed (UTF-8), salt = SALT, info = purpose || "/" || device id, 48 bytes)
    scalar = int(okm, big endian) mod (n - 1) + 1          (P-256 group order n)
    ueid   = 0x01 || HKDF-SHA256(..., info = "ueid/" || device id, 16 bytes)   (RFC 9711 RAND type)

The 48-byte output (16 bytes more than the order) makes the modular bias negligible.
A *forged* device signs with a key derived under another purpose: deterministic, yet
not the key that was enrolled.
"""

from __future__ import annotations

from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from device_sim.cose import VerifyKey

SALT: Final = b"fleet-attest device-sim v1"
P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
UEID_TYPE_RAND: Final = 0x01
DEFAULT_SEED: Final = "demo"


class HubKeyError(ValueError):
    """The hub key cannot be used (wrong format or unsupported algorithm)."""


def _okm(seed: str, purpose: str, device_id: str, length: int) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=SALT, info=f"{purpose}/{device_id}".encode())
    return hkdf.derive(seed.encode())


def _derive(seed: str, purpose: str, device_id: str) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(_okm(seed, purpose, device_id, 48), "big") % (P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def derive_key(seed: str, purpose: str, device_id: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key for ``purpose`` (e.g. a rotated key generation), deterministic in seed and id."""
    return _derive(seed, purpose, device_id)


def device_private_key(seed: str, device_id: str) -> ec.EllipticCurvePrivateKey:
    """The device's enrolled P-256 key."""
    return _derive(seed, "device-key", device_id)


def forged_private_key(seed: str, device_id: str) -> ec.EllipticCurvePrivateKey:
    """A key a forging device signs with: never the enrolled one."""
    return _derive(seed, "forged-key", device_id)


def device_ueid(seed: str, device_id: str) -> bytes:
    """17-byte UEID: type 0x01 (RAND) and 16 derived bytes, stable per device and seed."""
    return bytes([UEID_TYPE_RAND]) + _okm(seed, "ueid", device_id, 16)


def public_key_pem(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_hub_public_key(pem: bytes) -> VerifyKey:
    """The hub's public key (EC P-256/384/521 or Ed25519) from PEM (a certificate also works)."""
    try:
        if b"BEGIN CERTIFICATE" in pem:
            key: object = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise HubKeyError(f"not a PEM public key or certificate: {exc}") from exc
    if not isinstance(key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise HubKeyError(f"unsupported hub key type {type(key).__name__}")
    return key
