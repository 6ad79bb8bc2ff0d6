"""Signed firmware manifests: the reference values for one device class.

A manifest is a COSE_Sign1 over a CBOR map (keys in ``hub.wire``, MF_*):
SUIT-style monotonic sequence number, device class, minimum security version
number (anti-rollback floor) and the releases with their component digests.
Operators author a TOML source (``firmware_manifests/<class>/manifest.toml``)
and sign it; the hub accepts only manifests signed by a configured operator
key and never one whose sequence number is lower than the one it holds.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import cbor2

from hub import wire
from hub.crypto.cbor_strict import CborError, loads_strict
from hub.crypto.cose import CoseError, decode_sign1, sign1, verify_sign1
from hub.crypto.keys import PrivateKey, PublicKey, fingerprint

_T = TypeVar("_T")
RELEASE_STATUSES = (wire.RELEASE_APPROVED, wire.RELEASE_DEPRECATED, wire.RELEASE_REVOKED)


class ManifestError(ValueError):
    """A manifest (source or signed) is invalid."""


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    digest: bytes
    size: int | None = None
    signer_id: bytes | None = None
    """Hash of the key that signs the image (a PSA software component's signer id), if given."""


@dataclass(frozen=True, slots=True)
class Release:
    version: str
    svn: int
    components: tuple[Component, ...]
    status: str = wire.RELEASE_APPROVED


@dataclass(frozen=True, slots=True)
class Manifest:
    device_class: str
    sequence: int
    min_svn: int
    releases: tuple[Release, ...]
    issued_at: int = 0
    signer: str = ""
    signed: bytes = b""
    _by_digest: Mapping[bytes, tuple[Release, Component]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        index = {comp.digest: (rel, comp) for rel in self.releases for comp in rel.components}
        object.__setattr__(self, "_by_digest", index)

    def lookup(self, digest: bytes) -> tuple[Release, Component] | None:
        return self._by_digest.get(digest)

    def release(self, version: str) -> Release | None:
        return next((rel for rel in self.releases if rel.version == version), None)


# --- source (TOML) ---------------------------------------------------------------


def parse_source(text: str) -> Manifest:
    """Parse a TOML manifest source into an unsigned Manifest."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"not valid TOML: {exc}") from exc
    try:
        releases = tuple(_source_release(entry) for entry in data.get("release", []))
        manifest = Manifest(
            device_class=_str(data, "device_class"),
            sequence=_uint(data, "sequence"),
            min_svn=_uint(data, "min_svn"),
            releases=releases,
        )
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"manifest source: {exc}") from exc
    _check(manifest)
    return manifest


def _source_release(entry: Mapping[str, object]) -> Release:
    comps = entry.get("component", [])
    if not isinstance(comps, list):
        raise TypeError("release.component must be an array of tables")
    return Release(
        version=_str(entry, "version"),
        svn=_uint(entry, "svn"),
        status=str(entry.get("status", wire.RELEASE_APPROVED)),
        components=tuple(
            Component(
                name=_str(comp, "name"),
                digest=_digest(_str(comp, "digest")),
                size=_uint(comp, "size") if "size" in comp else None,
                signer_id=_signer_id(_str(comp, "signer_id")) if "signer_id" in comp else None,
            )
            for comp in comps
        ),
    )


def _digest(text: str) -> bytes:
    algo, _, hexdigest = text.partition(":")
    if algo != "sha256" or len(hexdigest) != 64:
        raise TypeError(f"digest {text!r} must be 'sha256:' and 64 hex digits")
    try:
        return bytes.fromhex(hexdigest)
    except ValueError as exc:
        raise TypeError(f"digest {text!r} must be 'sha256:' and 64 hex digits") from exc


def _signer_id(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError as exc:
        raise TypeError(f"signer_id {text!r} must be hex") from exc
    if len(value) not in wire.PSA_HASH_SIZES:
        raise TypeError("signer_id must be 32, 48 or 64 bytes")
    return value


def _str(data: Mapping[str, object], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise TypeError(f"{key} must be a non-empty string")
    return value


def _uint(data: Mapping[str, object], key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{key} must be a non-negative integer")
    return value


def check_manifest(manifest: Manifest) -> None:
    """Raise ManifestError for a manifest no device could be appraised against (names the release and component)."""
    _check(manifest)


def _check(manifest: Manifest) -> None:
    versions = [rel.version for rel in manifest.releases]
    if len(set(versions)) != len(versions):
        raise ManifestError("a release version appears twice")
    for rel in manifest.releases:
        if rel.status not in RELEASE_STATUSES:
            raise ManifestError(f"release {rel.version}: status must be one of {', '.join(RELEASE_STATUSES)}")
        if not rel.components:
            raise ManifestError(f"release {rel.version} lists no components")
        names = [comp.name for comp in rel.components]
        for name in sorted({n for n in names if names.count(n) > 1}):
            # appraisal matches measured components to a release by name: a second entry would shadow the
            # first and make honest devices of this release look as if they ran another one
            raise ManifestError(f"release {rel.version} lists component {name!r} twice")
        for comp in rel.components:
            if len(comp.digest) != 32:
                raise ManifestError(f"release {rel.version} component {comp.name}: digest must be 32 bytes")
            if comp.signer_id is not None and len(comp.signer_id) not in wire.PSA_HASH_SIZES:
                raise ManifestError(f"release {rel.version} component {comp.name}: signer id must be 32/48/64 bytes")


def to_source(manifest: Manifest) -> dict[str, object]:
    """The TOML-ready source form of a manifest (for ``manifest create`` and ``show``)."""
    return {
        "device_class": manifest.device_class,
        "sequence": manifest.sequence,
        "min_svn": manifest.min_svn,
        "release": [
            {
                "version": rel.version,
                "svn": rel.svn,
                "status": rel.status,
                "component": [
                    {"name": c.name, "digest": "sha256:" + c.digest.hex(), **({"size": c.size} if c.size else {}),
                     **({"signer_id": c.signer_id.hex()} if c.signer_id is not None else {})}
                    for c in rel.components
                ],
            }
            for rel in manifest.releases
        ],
    }


# --- signed form (CBOR / COSE) -------------------------------------------------


def encode_payload(manifest: Manifest, issued_at: int | None = None) -> bytes:
    releases = [
        {
            wire.REL_VERSION: rel.version,
            wire.REL_SVN: rel.svn,
            wire.REL_STATUS: rel.status,
            wire.REL_COMPONENTS: [
                {
                    wire.COMP_NAME: c.name,
                    wire.COMP_DIGEST: [wire.SHA256, c.digest],
                    **({wire.COMP_SIZE: c.size} if c.size is not None else {}),
                    **({wire.COMP_SIGNER_ID: c.signer_id} if c.signer_id is not None else {}),
                }
                for c in rel.components
            ],
        }
        for rel in manifest.releases
    ]
    return cbor2.dumps(
        {
            wire.MF_VERSION: 1,
            wire.MF_SEQUENCE: manifest.sequence,
            wire.MF_DEVICE_CLASS: manifest.device_class,
            wire.MF_MIN_SVN: manifest.min_svn,
            wire.MF_RELEASES: releases,
            wire.MF_ISSUED_AT: int(time.time()) if issued_at is None else issued_at,
        }
    )


def sign_manifest(manifest: Manifest, key: PrivateKey, issued_at: int | None = None) -> bytes:
    """COSE_Sign1 over the manifest payload; ManifestError if the manifest breaks a rule of ``check_manifest``."""
    _check(manifest)
    kid = fingerprint(key.public_key()).encode()
    return sign1(encode_payload(manifest, issued_at), key, kid=kid, content_type=wire.MANIFEST_PROFILE)


def verify_manifest(raw: bytes, trusted: Mapping[str, PublicKey]) -> Manifest:
    """Verify a signed manifest against the operator keys the hub trusts (by fingerprint)."""
    try:
        message = decode_sign1(raw, max_bytes=1024 * 1024)
        kid = (message.kid or b"").decode("ascii", "replace")
        key = trusted.get(kid)
        if key is None:
            raise ManifestError(f"signed by an untrusted key ({kid[:16] or 'no kid'})")
        verify_sign1(message, key)
        payload = loads_strict(message.payload, max_bytes=1024 * 1024, max_depth=8)
    except (CoseError, CborError) as exc:
        raise ManifestError(f"signed manifest rejected: {exc}") from exc
    manifest = _from_payload(payload, signer=kid, signed=bytes(raw))
    _check(manifest)
    return manifest


def _from_payload(payload: object, *, signer: str, signed: bytes) -> Manifest:
    try:
        if not isinstance(payload, Mapping) or payload.get(wire.MF_VERSION) != 1:
            raise TypeError("not a version-1 manifest map")
        releases = []
        for rel in payload[wire.MF_RELEASES]:
            comps = tuple(
                Component(
                    name=_typed(c[wire.COMP_NAME], str),
                    digest=_digest_pair(c[wire.COMP_DIGEST]),
                    size=_typed(c[wire.COMP_SIZE], int) if wire.COMP_SIZE in c else None,
                    signer_id=_typed(c[wire.COMP_SIGNER_ID], bytes) if wire.COMP_SIGNER_ID in c else None,
                )
                for c in rel[wire.REL_COMPONENTS]
            )
            releases.append(
                Release(
                    version=_typed(rel[wire.REL_VERSION], str),
                    svn=_typed(rel[wire.REL_SVN], int),
                    components=comps,
                    status=_typed(rel.get(wire.REL_STATUS, wire.RELEASE_APPROVED), str),
                )
            )
        return Manifest(
            device_class=_typed(payload[wire.MF_DEVICE_CLASS], str),
            sequence=_typed(payload[wire.MF_SEQUENCE], int),
            min_svn=_typed(payload[wire.MF_MIN_SVN], int),
            releases=tuple(releases),
            issued_at=_typed(payload.get(wire.MF_ISSUED_AT, 0), int),
            signer=signer,
            signed=signed,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"manifest payload malformed: {exc}") from exc


def _digest_pair(value: object) -> bytes:
    if not isinstance(value, (list, tuple)) or len(value) != 2 or value[0] != wire.SHA256:
        raise TypeError("digest must be [-16, bstr]")
    return _typed(value[1], bytes)


def _typed(value: object, kind: type[_T]) -> _T:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value
