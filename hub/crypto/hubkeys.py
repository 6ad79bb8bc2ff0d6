"""The hub's own secrets: its signing key (results, commands, epochs), the
nonce secret shared by all workers, the operator keys it trusts for manifests, and
the symmetric keys enrolled for devices that MAC their tokens (COSE_Mac0, HMAC 256/256).

Device MAC keys are secrets like the nonce secret, so they are kept the same way: a file
each, owner-only (0600) in an owner-only directory (0700) of the state directory, never
in the database (whose backups and replicas travel further); named by a hash of the
device id, created exclusively, never overwritten."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from hub.config import Settings
from hub.crypto.keys import (
    PrivateKey,
    PublicKey,
    fingerprint,
    generate_p256,
    load_private_file,
    load_public_pem,
    write_private_key,
)

MAC_KEY_SIZE = 32  # HMAC 256/256
MAC_KEY_DIR = "device-mac-keys"


class HubKeyError(RuntimeError):
    """A key file is missing or unusable."""


def _mac_key_path(directory: Path, device_id: str) -> Path:
    return directory / (hashlib.sha256(device_id.encode()).hexdigest()[:40] + ".key")


def write_device_mac_key(settings: Settings, device_id: str, key: bytes) -> Path:
    """Store a device's symmetric key (32 bytes) owner-only; HubKeyError if it has one already or is malformed."""
    if len(key) != MAC_KEY_SIZE:
        raise HubKeyError(f"{device_id}: a MAC key must be {MAC_KEY_SIZE} bytes (HMAC 256/256), got {len(key)}")
    directory = settings.state_dir / MAC_KEY_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    path = _mac_key_path(directory, device_id)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise HubKeyError(f"{device_id}: a MAC key is already enrolled") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return path


@dataclass(frozen=True, slots=True)
class HubKeys:
    signing_key: PrivateKey
    nonce_secret: bytes
    operator_keys: dict[str, PublicKey]
    mac_key_dir: Path | None = None

    def device_mac_key(self, device_id: str) -> bytes | None:
        """The symmetric key enrolled for ``device_id``, or None if it has none (or it cannot be read)."""
        if self.mac_key_dir is None:
            return None
        try:
            key = _mac_key_path(self.mac_key_dir, device_id).read_bytes()
        except OSError:
            return None
        return key if len(key) == MAC_KEY_SIZE else None

    @property
    def kid(self) -> bytes:
        return fingerprint(self.signing_key.public_key())[:16].encode()

    @property
    def public_key(self) -> PublicKey:
        return self.signing_key.public_key()


def init_state(settings: Settings) -> None:
    """Create the state directory, the hub signing key and the nonce secret if absent."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    if not settings.hub_key_path.exists():
        write_private_key(settings.hub_key_path, generate_p256())
    if not settings.nonce_secret_path.exists():
        fd = os.open(settings.nonce_secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(32))


def load_hub_keys(settings: Settings) -> HubKeys:
    try:
        signing = load_private_file(settings.hub_key_path)
        secret = settings.nonce_secret_path.read_bytes()
    except (OSError, ValueError) as exc:
        raise HubKeyError(f"{exc} (run 'attest-hub init' to create the hub's keys)") from exc
    if len(secret) < 32:
        raise HubKeyError(f"{settings.nonce_secret_path}: nonce secret must be at least 32 bytes")
    return HubKeys(signing, secret, load_operator_keys(settings.operator_keys), settings.state_dir / MAC_KEY_DIR)


def load_operator_keys(paths: tuple[str, ...]) -> dict[str, PublicKey]:
    keys: dict[str, PublicKey] = {}
    for path in paths:
        try:
            key = load_public_pem(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise HubKeyError(f"operator key {path}: {exc}") from exc
        keys[fingerprint(key)] = key
    return keys
