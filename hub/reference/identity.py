"""Device identity from X.509: certificate chains to a manufacturer CA the operator configured.

A device may present an ``x5chain`` (COSE header 33, protected only) with its
evidence, or be enrolled with its certificate. Either way the chain must
verify to a configured trust anchor (RFC 5280 path validation by
``cryptography.x509.verification``, client-auth profile), and the leaf's
subject CN must be exactly the device id the message arrived for. A CN that
could collide with a topic or an identity (``/``, ``+``, ``#``, control
characters) is refused.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from hub.crypto.keys import KeyFileError, PublicKey, allowed_algorithms
from hub.crypto.pki import PkiError, validate_device_id

MAX_CHAIN = 4
MAX_CERT_BYTES = 4096


class IdentityError(ValueError):
    """A certificate or chain is not acceptable; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def load_anchors(paths: Sequence[str]) -> tuple[x509.Certificate, ...]:
    anchors = []
    for path in paths:
        try:
            anchors.extend(x509.load_pem_x509_certificates(Path(path).read_bytes()))
        except (OSError, ValueError) as exc:
            raise KeyFileError(f"manufacturer CA {path}: {exc}") from exc
    return tuple(anchors)


def parse_x5chain(value: object) -> list[x509.Certificate]:
    """COSE x5chain: one bstr (the leaf) or an array of bstr, leaf first (RFC 9360)."""
    items = [value] if isinstance(value, bytes) else value
    if not isinstance(items, (list, tuple)) or not 1 <= len(items) <= MAX_CHAIN:
        raise IdentityError("bad-x5chain", f"x5chain must be a bstr or an array of 1..{MAX_CHAIN} bstr")
    certs = []
    for item in items:
        if not isinstance(item, bytes) or len(item) > MAX_CERT_BYTES:
            raise IdentityError("bad-x5chain", "each certificate must be a DER bstr of at most 4 KiB")
        try:
            certs.append(x509.load_der_x509_certificate(item))
        except ValueError as exc:
            raise IdentityError("bad-x5chain", f"not a DER certificate: {exc}") from exc
    return certs


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        raise IdentityError("bad-certificate", "the subject must hold exactly one common name")
    return names[0].value


def verify_chain(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    device_id: str,
    at: dt.datetime | None = None,
) -> PublicKey:
    """Validate ``chain`` (leaf first) to an anchor; the leaf must name ``device_id``. Returns its key."""
    if not anchors:
        raise IdentityError("no-trust-anchor", "no manufacturer CA is configured")
    leaf, intermediates = chain[0], list(chain[1:])
    cn = common_name(leaf)
    try:
        validate_device_id(cn)
    except PkiError as exc:
        raise IdentityError("unsafe-cn", str(exc)) from exc
    if cn != device_id:
        raise IdentityError("cn-mismatch", f"certificate names {cn!r}, not {device_id!r}")
    when = at or dt.datetime.now(dt.UTC)
    verifier = PolicyBuilder().store(Store(list(anchors))).time(when).build_client_verifier()
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise IdentityError("untrusted-chain", str(exc)[:200]) from exc
    key = leaf.public_key()
    if not isinstance(key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)) or not allowed_algorithms(key):
        raise IdentityError("bad-certificate", "the certificate key must be EC P-256/384/521 or Ed25519")
    return key
