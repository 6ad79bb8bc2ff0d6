"""AR4SI trust vectors and tiers (draft-ietf-rats-ar4si), the hub's verdict vocabulary."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields, replace

from hub import wire


class Tier(enum.IntEnum):
    """EAR status values; a higher value is a worse tier."""

    NONE = wire.TIER_NONE
    AFFIRMING = wire.TIER_AFFIRMING
    WARNING = wire.TIER_WARNING
    CONTRAINDICATED = wire.TIER_CONTRAINDICATED

    @property
    def label(self) -> str:
        return self.name.lower()


def tier_of(value: int) -> Tier:
    """The tier of one trust claim value; negatives are each tier's private range."""
    magnitude = -value if value < 0 else value
    if value < 0:
        magnitude -= 1  # -2..-32 affirming, -33..-96 warning, -97..-128 contraindicated
    if magnitude >= 96:
        return Tier.CONTRAINDICATED
    if magnitude >= 32:
        return Tier.WARNING
    if magnitude >= 2:
        return Tier.AFFIRMING
    return Tier.NONE


# Common AR4SI values, by claim.
IDENTITY_TRUSTWORTHY = 2
IDENTITY_UNTRUSTWORTHY = 96
IDENTITY_UNRECOGNIZED = 97
CONFIG_APPROVED = 2
CONFIG_UNSAFE = 32
CONFIG_CONTRAINDICATED = 96
EXEC_APPROVED = 2
EXEC_UNRECOGNIZED = 32
EXEC_VULNERABLE = 33
EXEC_CONTRAINDICATED = 96
HARDWARE_GENUINE = 2
HARDWARE_UNSAFE = 32
HARDWARE_CONTRAINDICATED = 96
HARDWARE_UNRECOGNIZED = 97
RUNTIME_APPROVED = 2
RUNTIME_UNSAFE = 32
RUNTIME_CONTRAINDICATED = 96
SOURCED_TRUSTED = 2
SOURCED_UNKNOWN = 32
SOURCED_CONTRAINDICATED = 96
CRYPTO_FAILED = 99
VERIFIER_MALFUNCTION = -1


@dataclass(frozen=True, slots=True)
class TrustVector:
    """One value per AR4SI trust claim; 0 means the verifier makes no claim."""

    instance_identity: int = 0
    configuration: int = 0
    executables: int = 0
    file_system: int = 0
    hardware: int = 0
    runtime_opaque: int = 0
    storage_opaque: int = 0
    sourced_data: int = 0

    def values(self) -> tuple[int, int, int, int, int, int, int, int]:
        """The eight claim values in AR4SI key order (0 instance-identity .. 7 sourced-data)."""
        return (self.instance_identity, self.configuration, self.executables, self.file_system, self.hardware,
                self.runtime_opaque, self.storage_opaque, self.sourced_data)

    def tier(self) -> Tier:
        return max(map(tier_of, self.values()))

    def to_cbor(self) -> dict[int, int]:
        """The EAR trustworthiness vector: claim key to value, zero claims left out."""
        return {key: value for key, value in enumerate(self.values()) if value}

    def to_json(self) -> dict[str, int]:
        return {name: value for name, value in zip(CLAIM_NAMES, self.values(), strict=True) if value}

    @classmethod
    def from_json(cls, data: dict[str, int]) -> TrustVector:
        return cls(**{k.replace("-", "_"): int(v) for k, v in data.items()})

    def worst(self, **claims: int) -> TrustVector:
        """A copy where each named claim keeps the worse of its old and new value."""
        changes = {}
        for name, value in claims.items():
            old = getattr(self, name)
            changes[name] = value if tier_of(value) >= tier_of(old) and value != 0 else old
        return replace(self, **changes)


CLAIM_NAMES = tuple(f.name.replace("_", "-") for f in fields(TrustVector))
"""The AR4SI claim names in key order, as the JSON EAR writes them (``instance-identity`` ...)."""


def crypto_failure() -> TrustVector:
    """AR4SI value 99 on every claim: the evidence could not be authenticated."""
    return TrustVector(*([CRYPTO_FAILED] * len(fields(TrustVector))))
