"""The evidence-scheme seam: what every scheme takes and returns.

A scheme is pure. The orchestrator (``hub.appraisal.pipeline``) does all I/O: it finds
the scheme by media type, fetches the trust anchor for the topic's device id,
calls ``verify``, checks freshness and replay on the returned claims, fetches
the reference values and device state the scheme needs, calls ``appraise``,
and then stores, publishes and acts. A scheme never touches a store, a clock
or the network, so each is testable with bytes in and values out.

Bad evidence is an ``EvidenceError`` raised from ``verify``; the orchestrator
turns it into a negative verdict. ``appraise`` never raises for bad claims: it
returns an ``Appraisal`` whose trust vector and problems say what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.x509 import Certificate

from hub.crypto.keys import PublicKey
from hub.reference.manifests import Manifest
from hub.reference.policy import Policy
from hub.reference.trust import TrustVector


class EvidenceError(Exception):
    """Evidence is malformed, unauthenticated or not this device's.

    ``reason`` is a short machine-friendly code (``bad-signature``,
    ``malformed-cbor``...); ``detail`` is for people.
    """

    def __init__(self, reason: str, detail: str = "", *, authenticated: bool = False) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.authenticated = authenticated


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    """What the hub's registry knows about a device, fetched by topic device id."""

    device_id: str
    device_class: str
    public_key: PublicKey | None
    ueid: bytes | None = None
    key_version: int = 1
    ca_certificates: tuple[Certificate, ...] = ()
    """Manufacturer CAs an ``x5chain`` may chain to (then the chain's leaf key is used)."""
    now: float | None = None
    """The hub's time for certificate validity, set by the orchestrator (schemes read no clock)."""
    mac_key: bytes | None = None
    """A symmetric key enrolled for the device (HMAC 256/256, COSE_Mac0 PSA tokens), instead of a public key."""


@dataclass(frozen=True, slots=True)
class Claims:
    """Authenticated claims, common fields first; ``body`` is the scheme's own typed value."""

    scheme: str
    device_id: str
    dedup_key: str
    """Names this evidence uniquely; from the signed payload, never from the message bytes."""
    counter: tuple[int, int] | None
    """(bootcount, sequence) for the replay high-water mark, or None if the scheme has none."""
    nonce: bytes | None
    body: object
    issued_at: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceState:
    """Per-device state the orchestrator loads from the store for appraisal."""

    svn_high_water: int = 0
    firmware_tier: int = 0
    chain_head: bytes | None = None
    chain_bootcount: int | None = None
    chain_seq: int | None = None
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AppraisalInputs:
    manifest: Manifest | None
    policy: Policy
    state: DeviceState


@dataclass(frozen=True, slots=True)
class Appraisal:
    """A scheme's judgement; ``state_updates`` are stored only if the verdict commits."""

    trust_vector: TrustVector
    problems: tuple[str, ...] = ()
    firmware_version: str | None = None
    state_updates: Mapping[str, object] = field(default_factory=dict)
    """Device columns to store if the verdict commits (e.g. ``svn_high_water``, ``chain_head``)."""
    verified_data: bytes | None = None
    """For data schemes: the CBOR records to republish on ``fleet/{id}/verified-data`` if the batch passed."""
    annotations: Mapping[str, object] = field(default_factory=dict)


class EvidenceScheme(Protocol):
    """One kind of evidence. Register instances in ``hub.schemes.SCHEMES``."""

    @property
    def name(self) -> str: ...

    @property
    def media_types(self) -> frozenset[str]: ...

    @property
    def topic_leaf(self) -> str:
        """The topic leaf it arrives on when no Content Type is given."""
        ...

    @property
    def attests_platform(self) -> bool:
        """True if a verdict says what the device runs (firmware, TPM, PSA): it sets the device's
        trust vector and may release a quarantine. False for evidence about data the device sent."""
        ...

    def verify(self, raw: bytes, anchor: TrustAnchor) -> Claims:
        """Strictly decode, check identity and signature; raise EvidenceError."""
        ...

    def appraise(self, claims: Claims, inputs: AppraisalInputs) -> Appraisal:
        """Judge authenticated claims against reference values and policy."""
        ...
