"""The hub's own secrets: its signing key (results, commands, epochs), the
nonce secret shared by all workers, and the operator keys it trusts for manifests."""

from __future__ import annotations

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


class HubKeyError(RuntimeError):
    """A key file is missing or unusable."""


@dataclass(frozen=True, slots=True)
class HubKeys:
    signing_key: PrivateKey
    nonce_secret: bytes
    operator_keys: dict[str, PublicKey]

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
    return HubKeys(signing, secret, load_operator_keys(settings.operator_keys))


def load_operator_keys(paths: tuple[str, ...]) -> dict[str, PublicKey]:
    keys: dict[str, PublicKey] = {}
    for path in paths:
        try:
            key = load_public_pem(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise HubKeyError(f"operator key {path}: {exc}") from exc
        keys[fingerprint(key)] = key
    return keys
