"""Firmware evidence: the EAT claims map (RFC 9711 integer keys) and its COSE_Sign1.

Payload of the firmware-evidence profile (``wire.FIRMWARE_PROFILE``)::

    {265: profile, 10: nonce, 256: ueid, 259: hwmodel (class, UTF-8 bstr),
     262: oemboot, 263: dbgstat, 267: bootcount, -65537: evidence seq, 6: iat,
     270: swname, 271: [swversion], 273: [[10000, bstr .cbor measured-component], ...]}

    measured-component = {1: [name, version], 2: [-16, sha256 digest]}
"""

from __future__ import annotations

from dataclasses import dataclass

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from device_sim import cose
from device_sim.firmware import Measurement
from hub import wire


@dataclass(frozen=True, slots=True)
class EvidenceClaims:
    """Everything one firmware evidence states about a device."""

    device_class: str
    ueid: bytes
    nonce: bytes
    bootcount: int
    seq: int
    iat: int
    sw_name: str
    sw_version: str
    measurements: tuple[Measurement, ...]
    secure_boot: bool = True
    debug_status: int = wire.DBG_DISABLED


def measured_component(measurement: Measurement) -> bytes:
    """CBOR of a measured component (draft-ietf-rats-eat-measured-component)."""
    return cbor2.dumps(
        {
            wire.MC_ID: [measurement.name, measurement.version],
            wire.MC_MEASUREMENT: [measurement.alg, measurement.digest],
        }
    )


def claims_map(claims: EvidenceClaims) -> dict[int, object]:
    return {
        wire.EAT_PROFILE: wire.FIRMWARE_PROFILE,
        wire.NONCE: claims.nonce,
        wire.UEID: claims.ueid,
        wire.HWMODEL: claims.device_class.encode(),
        wire.OEMBOOT: claims.secure_boot,
        wire.DBGSTAT: claims.debug_status,
        wire.BOOTCOUNT: claims.bootcount,
        wire.EVIDENCE_SEQ: claims.seq,
        wire.IAT: claims.iat,
        wire.SWNAME: claims.sw_name,
        wire.SWVERSION: [claims.sw_version],
        wire.MEASUREMENTS: [[wire.MC_CONTENT_FORMAT, measured_component(m)] for m in claims.measurements],
    }


def encode_payload(claims: EvidenceClaims) -> bytes:
    return cbor2.dumps(claims_map(claims))


def sign_evidence(claims: EvidenceClaims, key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    """COSE_Sign1 of the claims, kid = the device id (UTF-8)."""
    return cose.sign1(encode_payload(claims), key, device_id.encode())
