"""The hub's own secrets: its signing key (results, commands, epochs), the
nonce secret shared by all workers, the key that seals the audit chain
(hub/audit.py), the operator keys it trusts for manifests, and the symmetric keys
enrolled for devices that MAC their tokens (COSE_Mac0, HMAC 256/256).

Secret files are created owner-only (umask 077, mode 0600 in a 0700 state
directory) and, as OpenSSH does for private keys, a secret file that group
or others can read is refused with the ``chmod`` that fixes it.

Device MAC keys are secrets like the nonce secret, so they are kept the same way: a file
each, owner-only (0600) in an owner-only directory (0700) of the state directory, never
in the database (whose backups and replicas travel further); named by a hash of the
device id, created exclusively, never overwritten. One that group or others can read is
not used (the device's evidence is then refused as having no key).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
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

log = logging.getLogger(__name__)
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
    with owner_only():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    path = _mac_key_path(directory, device_id)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError as exc:
        raise HubKeyError(f"{device_id}: a MAC key is already enrolled") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    return path


@dataclass(frozen=True, slots=True)
class HubKeys:
    signing_key: PrivateKey
    nonce_secret: bytes
    operator_keys: dict[str, PublicKey]
    audit_key: bytes = b""
    mac_key_dir: Path | None = None

    def device_mac_key(self, device_id: str) -> bytes | None:
        """The symmetric key enrolled for ``device_id``, or None if it has none (or it cannot be read)."""
        if self.mac_key_dir is None:
            return None
        path = _mac_key_path(self.mac_key_dir, device_id)
        try:
            if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.error("MAC key of %s not used: permissions too open; run: chmod 600 '%s'", device_id, path)
                return None
            key = path.read_bytes()
        except OSError:
            return None
        return key if len(key) == MAC_KEY_SIZE else None

    @property
    def kid(self) -> bytes:
        return fingerprint(self.signing_key.public_key())[:16].encode()

    @property
    def public_key(self) -> PublicKey:
        return self.signing_key.public_key()


@contextmanager
def owner_only() -> Iterator[None]:
    """Files and directories created inside are readable by their owner only (umask 077)."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def init_state(settings: Settings) -> None:
    """Create the state directory (0700), the hub signing key, the nonce secret and the audit key if absent."""
    with owner_only():
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        if not settings.hub_key_path.exists():
            write_private_key(settings.hub_key_path, generate_p256())
        for path in (settings.nonce_secret_path, settings.audit_key_path):
            if not path.exists():
                write_secret(path, os.urandom(32))


def write_secret(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600 from creation (a temporary file, fsync, rename)."""
    temporary = path.with_name(path.name + ".new")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def check_private(path: Path) -> None:
    """Refuse a secret file that group or others may read or write (OpenSSH's rule for private keys)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise HubKeyError(f"cannot read {path}: {exc.strerror} (run 'attest-hub init' to create the hub's keys)"
                          ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise HubKeyError(f"permissions {stat.S_IMODE(mode):04o} for '{path}' are too open: a secret must not "
                          f"be accessible by others; run: chmod 600 '{path}'")


def read_secret(path: Path, what: str) -> bytes:
    """A secret of at least 32 bytes from an owner-only file."""
    check_private(path)
    try:
        secret = path.read_bytes()
    except OSError as exc:
        raise HubKeyError(f"cannot read {path}: {exc.strerror}") from exc
    if len(secret) < 32:
        raise HubKeyError(f"{path}: {what} must be at least 32 bytes")
    return secret


def load_hub_keys(settings: Settings) -> HubKeys:
    check_private(settings.hub_key_path)
    try:
        signing = load_private_file(settings.hub_key_path)
    except (OSError, ValueError) as exc:
        raise HubKeyError(f"{exc} (run 'attest-hub init' to create the hub's keys)") from exc
    secret = read_secret(settings.nonce_secret_path, "nonce secret")
    audit_key = read_secret(settings.audit_key_path, "audit key")
    return HubKeys(signing, secret, load_operator_keys(settings.operator_keys), audit_key,
                   settings.state_dir / MAC_KEY_DIR)


def load_operator_keys(paths: tuple[str, ...]) -> dict[str, PublicKey]:
    keys: dict[str, PublicKey] = {}
    for path in paths:
        try:
            key = load_public_pem(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise HubKeyError(f"operator key {path}: {exc}") from exc
        keys[fingerprint(key)] = key
    return keys
