"""Keys: loading, the algorithms each key may be used with, and key ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from hub import wire

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class KeyFileError(ValueError):
    """A key file or key value is unusable."""


_CURVE_ALGS: dict[str, frozenset[int]] = {
    "secp256r1": frozenset({wire.ALG_ES256, wire.ALG_ESP256}),
    "secp384r1": frozenset({wire.ALG_ES384}),
    "secp521r1": frozenset({wire.ALG_ES512}),
}
_ED25519_ALGS = frozenset({wire.ALG_EDDSA, wire.ALG_ED25519})


def allowed_algorithms(key: PublicKey) -> frozenset[int]:
    """COSE algorithms this key may verify; an algorithm the key was not made for is refused."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return _ED25519_ALGS
    return _CURVE_ALGS.get(key.curve.name, frozenset())


def signing_algorithm(key: PrivateKey) -> int:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return wire.ALG_EDDSA
    return {"secp256r1": wire.ALG_ES256, "secp384r1": wire.ALG_ES384, "secp521r1": wire.ALG_ES512}[key.curve.name]


def load_public_pem(data: bytes | str) -> PublicKey:
    raw = data.encode() if isinstance(data, str) else data
    try:
        key = serialization.load_pem_public_key(raw)
    except ValueError as exc:
        raise KeyFileError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise KeyFileError(f"unsupported key type {type(key).__name__}: use EC P-256/384/521 or Ed25519")
    if not allowed_algorithms(key):
        raise KeyFileError("unsupported curve")
    return key


def load_private_pem(data: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise KeyFileError(f"unsupported key type {type(key).__name__}")
    return key


def load_private_file(path: Path) -> PrivateKey:
    try:
        return load_private_pem(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from exc


def public_pem(key: PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def fingerprint(key: PublicKey) -> str:
    """SHA-256 of the SubjectPublicKeyInfo, hex: the hub's key id for its own keys."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def generate_p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write a PEM private key readable by its owner only (mode 0600 from creation)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem(key))
    os.chmod(path, 0o600)
