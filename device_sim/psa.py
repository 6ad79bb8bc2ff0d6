"""Simulated TF-M platforms that attest with PSA tokens (RFC 9783, profile ``wire.PSA_PROFILE``).

The token is built here from RFC 9783's claim structure and signed with the
simulator's own COSE encoder (``device_sim.cose``), never the hub's::

    {265: profile, 10: nonce, 256: instance id (0x01 || 32 bytes), 2394: client id,
     2395: security lifecycle, 2396: implementation id (32 bytes), 268: boot seed (EAT bootseed),
     2398: certification reference, 2400: verification service indicator,
     2399: [{1: measurement type, 2: measurement value, 4: version, 5: signer id}, ...]}

Determinism (same seed, same tokens but for the ECDSA randomness):

* instance id = ``0x01 || HKDF-SHA256(seed, SALT, "psa-instance-id/{id}", 32 bytes)``;
* implementation id = ``SHA-256("psa-sensor/implementation")``;
* boot seed = ``HKDF-SHA256(seed, SALT, "boot-seed/{id}/{bootcount}", 32 bytes)``;
* signer id of a component = ``SHA-256("psa-sensor/{secure|non-secure}/signing-key")``: BL2, PRoT and
  ARoT are signed with the secure image key, NSPE with the non-secure one (as MCUboot does on TF-M).

Profiles: honest; forged (signs with another key); debug (lifecycle non-PSA-RoT debug, 0x4000);
tampered (NSPE image modified: its measurement is in no manifest); wrong-nonce (signs a nonce the hub
never issued, as a device replaying an old answer would).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from device_sim import cose, firmware, keys
from device_sim.data_profiles import DataOut
from device_sim.device import Clock, SimDevice
from device_sim.profiles import MixEntry, MixError, allocate, interleave
from device_sim.records import EvidenceKind, EvidenceRecord, Profile
from hub import wire

CLASS: Final = firmware.PSA_SENSOR
CLIENT_ID_NON_SECURE: Final = -1  # TF-M reports the non-secure caller as a negative client id
CERTIFICATION_REFERENCE: Final = "1234567890123-12345"
VERIFICATION_SERVICE: Final = "https://hub.fleet-attest.example/psa"
APPLICATION: Final = "NSPE"


class PsaProfile(StrEnum):
    """How a simulated PSA platform behaves."""

    HONEST = "honest"
    FORGED = "forged"  # signs with a key that is not its enrolled one
    DEBUG = "debug"  # security lifecycle 0x4000 (non-PSA-RoT debug): not secured
    TAMPERED = "tampered"  # NSPE image modified: measurement value in no manifest
    WRONG_NONCE = "wrong-nonce"  # carries a nonce the hub never issued


_BASE_PROFILE: Final = MappingProxyType({
    PsaProfile.HONEST: Profile.HONEST,
    PsaProfile.FORGED: Profile.FORGED,
    PsaProfile.DEBUG: Profile.HONEST,
    PsaProfile.TAMPERED: Profile.TAMPERED,
    PsaProfile.WRONG_NONCE: Profile.HONEST,
})


@dataclass(frozen=True, slots=True)
class SoftwareComponent:
    measurement_type: str
    measurement_value: bytes
    version: str
    signer_id: bytes


@dataclass(frozen=True, slots=True)
class PsaToken:
    """Everything one PSA token states."""

    nonce: bytes
    instance_id: bytes
    implementation_id: bytes
    client_id: int
    lifecycle: int
    boot_seed: bytes
    components: tuple[SoftwareComponent, ...]
    certification_reference: str = CERTIFICATION_REFERENCE
    verification_service: str = VERIFICATION_SERVICE


def _hkdf(seed: str, info: str, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=keys.SALT, info=info.encode()).derive(seed.encode())


def instance_id(seed: str, device_id: str) -> bytes:
    """33-byte instance id: UEID type 0x01 (RAND) and 32 derived bytes."""
    return bytes([keys.UEID_TYPE_RAND]) + _hkdf(seed, f"psa-instance-id/{device_id}", 32)


def implementation_id(device_class: str = CLASS) -> bytes:
    return hashlib.sha256(f"{device_class}/implementation".encode()).digest()


def boot_seed(seed: str, device_id: str, bootcount: int) -> bytes:
    return _hkdf(seed, f"boot-seed/{device_id}/{bootcount}", 32)


def signer_id(component: str, device_class: str = CLASS) -> bytes:
    """Hash of the key that signs ``component``'s image (RFC 9783 signer id)."""
    domain = "non-secure" if component == APPLICATION else "secure"
    return hashlib.sha256(f"{device_class}/{domain}/signing-key".encode()).digest()


def software_components(version: str, *, tampered: bool = False) -> tuple[SoftwareComponent, ...]:
    return tuple(
        SoftwareComponent(m.name, m.digest, m.version, signer_id(m.name))
        for m in firmware.measurements(CLASS, version, tampered=tampered)
    )


def claims_map(token: PsaToken) -> dict[int, object]:
    return {
        wire.EAT_PROFILE: wire.PSA_PROFILE,
        wire.NONCE: token.nonce,
        wire.UEID: token.instance_id,
        wire.PSA_CLIENT_ID: token.client_id,
        wire.PSA_SECURITY_LIFECYCLE: token.lifecycle,
        wire.PSA_IMPLEMENTATION_ID: token.implementation_id,
        wire.PSA_BOOT_SEED: token.boot_seed,
        wire.PSA_CERTIFICATION_REFERENCE: token.certification_reference,
        wire.PSA_VERIFICATION_SERVICE: token.verification_service,
        wire.PSA_SOFTWARE_COMPONENTS: [
            {
                wire.SWC_MEASUREMENT_TYPE: c.measurement_type,
                wire.SWC_MEASUREMENT_VALUE: c.measurement_value,
                wire.SWC_VERSION: c.version,
                wire.SWC_SIGNER_ID: c.signer_id,
            }
            for c in token.components
        ],
    }


def sign_token(token: PsaToken, key: ec.EllipticCurvePrivateKey) -> bytes:
    """COSE_Sign1 of the claims; the protected kid is the instance id (the key's name in PSA)."""
    return cose.sign1(cbor2.dumps(claims_map(token)), key, token.instance_id)


class PsaSimDevice(SimDevice):
    """A ``SimDevice`` whose evidence is a PSA token; the fleet publishes it as ``wire.PSA_MEDIA_TYPE``."""

    def __init__(
        self,
        device_id: str,
        profile: PsaProfile = PsaProfile.HONEST,
        *,
        seed: str = keys.DEFAULT_SEED,
        version: str | None = None,
        bootcount: int = 1,
        hub_key: cose.VerifyKey | None = None,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(device_id, CLASS, _BASE_PROFILE[profile], seed=seed, version=version, bootcount=bootcount,
                         hub_key=hub_key, clock=clock)
        self.psa_profile = profile
        self.ueid = instance_id(seed, device_id)
        self._seed = seed
        self._components = software_components(self.release.version, tampered=profile is PsaProfile.TAMPERED)
        secured = profile is not PsaProfile.DEBUG
        self.lifecycle = wire.PSA_LIFECYCLE_SECURED if secured else wire.PSA_LIFECYCLE_NON_PSA_ROT_DEBUG

    def data_due(self) -> list[DataOut]:
        """Simulated PSA platforms attest only; they send no telemetry batches."""
        return []

    def __repr__(self) -> str:
        return f"PsaSimDevice({self.device_id!r}, {self.psa_profile.value}, {self.release.version})"

    def _sign(self, nonce: bytes, seq: int, now: float, kind: EvidenceKind) -> EvidenceRecord:
        if self.psa_profile is PsaProfile.WRONG_NONCE:
            nonce = hashlib.sha256(f"not-a-hub-nonce/{self.device_id}/{seq}".encode()).digest()
        token = PsaToken(
            nonce=nonce,
            instance_id=self.ueid,
            implementation_id=implementation_id(),
            client_id=CLIENT_ID_NON_SECURE,
            lifecycle=self.lifecycle,
            boot_seed=boot_seed(self._seed, self.device_id, self._bootcount),
            components=self._components,
        )
        raw = sign_token(token, self._signing_key)
        return EvidenceRecord(seq, self._bootcount, nonce, int(now), now, kind, raw)

    def report(self) -> dict[str, object]:
        report = super().report()
        report["profile"] = self.psa_profile.value
        report["lifecycle"] = self.lifecycle
        return report


def parse_psa_mix(text: str) -> tuple[tuple[PsaProfile, int], ...]:
    """``"honest:4,debug:1"`` → ((HONEST, 4), (DEBUG, 1))."""
    entries: list[tuple[PsaProfile, int]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight_text = part.partition(":")
        try:
            entries.append((PsaProfile(name.strip()), int(weight_text) if sep else 1))
        except ValueError as exc:
            raise MixError(f"bad PSA mix entry {part!r} (profiles: {', '.join(p.value for p in PsaProfile)})") from exc
    if not entries or any(w < 0 for _, w in entries) or sum(w for _, w in entries) <= 0:
        raise MixError(f"PSA mix {text!r} needs non-negative weights and a positive total")
    return tuple(entries)


def build_psa_fleet(n: int, mix: str = "honest:1", seed: str = keys.DEFAULT_SEED, *,
                    bootcount: int = 1) -> list[PsaSimDevice]:
    """N PSA platforms ``psa-sensor-0001``..., profiles spread as ``profiles.build_fleet`` spreads them."""
    entries = parse_psa_mix(mix)
    picks = interleave(allocate(n, tuple(MixEntry(Profile.HONEST, w) for _, w in entries)))
    return [PsaSimDevice(f"{CLASS}-{i + 1:04d}", entries[pick][0], seed=seed, bootcount=bootcount)
            for i, pick in enumerate(picks)]
