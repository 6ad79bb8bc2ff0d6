"""From a stored verdict row to the detector's ``VerdictEvent``.

The release and measurement set are read back from the stored evidence of
verdicts the hub authenticated and appraised (the signature was checked when
it arrived; here the payload is only decoded again, strictly and bounded).
A measurement set is named by a fingerprint: SHA-256 over the reported
version and the sorted component digests, so two devices running the same
images share it whatever order they list them in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from hub import wire
from hub.anomaly.stats import PLATFORM_SCHEMES, VerdictEvent, counter_of
from hub.crypto.cbor_strict import CborError, loads_strict
from hub.crypto.cose import CoseError, decode_sign1

MAX_EVIDENCE = 64 * 1024
_COMPONENTS_MAX = 4096
_components: dict[bytes, bytes | None] = {}
"""A measured component's encoding -> its digest: a fleet runs few distinct images (bounded, cleared when full)."""


def event_from_row(row: Mapping[str, Any]) -> VerdictEvent:
    """The detector's view of one verdict row (``hub.store.models.Verdict``)."""
    authenticated = bool(row["authenticated"])
    rejected = row["status"] == "rejected"
    fingerprint = version = None
    if authenticated and not rejected and row["scheme"] in PLATFORM_SCHEMES:
        fingerprint, version = measurement_set(bytes(row["evidence"] or b""))
    return VerdictEvent(
        device_id=str(row["device_id"]), at=float(row["received_at"]), scheme=str(row["scheme"]),
        authenticated=authenticated, rejected=rejected, counter=counter_of(str(row["dedup_key"])),
        fingerprint=fingerprint, version=version,
    )


def measurement_set(raw: bytes) -> tuple[str | None, str | None]:
    """``(fingerprint, version)`` of firmware or PSA evidence; ``(None, None)`` if it has none."""
    try:
        message = decode_sign1(raw, max_bytes=MAX_EVIDENCE)
        claims = loads_strict(message.payload, max_bytes=MAX_EVIDENCE, max_depth=8)
    except (CoseError, CborError):
        return None, None
    if not isinstance(claims, Mapping):
        return None, None
    version: str | None = None
    digests: list[bytes] = []
    if claims.get(wire.EAT_PROFILE) == wire.FIRMWARE_PROFILE:
        swversion = claims.get(wire.SWVERSION)
        if isinstance(swversion, list) and swversion and isinstance(swversion[0], str):
            version = swversion[0]
        for entry in claims.get(wire.MEASUREMENTS) or ():
            digest = _component_digest(entry)
            if digest is not None:
                digests.append(digest)
    elif claims.get(wire.EAT_PROFILE) == wire.PSA_PROFILE:
        for component in claims.get(wire.PSA_SOFTWARE_COMPONENTS) or ():
            if isinstance(component, Mapping) and isinstance(component.get(wire.SWC_MEASUREMENT_VALUE), bytes):
                digests.append(component[wire.SWC_MEASUREMENT_VALUE])
                if version is None and isinstance(component.get(wire.SWC_VERSION), str):
                    version = component[wire.SWC_VERSION]
    if not digests:
        return None, version
    h = hashlib.sha256((version or "").encode() + b"\x00")
    for digest in sorted(digests):
        h.update(digest)
    return h.hexdigest()[:32], version


def _component_digest(entry: object) -> bytes | None:
    if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[1], bytes):
        return None
    raw = entry[1]
    if raw in _components:
        return _components[raw]
    if len(_components) >= _COMPONENTS_MAX:
        _components.clear()
    digest = _components[raw] = _decode_component(raw)
    return digest


def _decode_component(raw: bytes) -> bytes | None:
    try:
        component = loads_strict(raw, max_bytes=1024, max_depth=4)
    except CborError:
        return None
    if not isinstance(component, Mapping):
        return None
    measurement = component.get(wire.MC_MEASUREMENT)
    if isinstance(measurement, list) and len(measurement) == 2 and isinstance(measurement[1], bytes):
        return measurement[1]
    return None
