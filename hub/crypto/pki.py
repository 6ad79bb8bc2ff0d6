"""Certificate tooling for the broker's mTLS: a CA, the broker's server cert, hub and device client certs.

The certificate CN is the broker identity (``use_identity_as_username``), the
client id (``use_username_as_clientid``), the ``%u`` in ACL patterns and the
device id in topics, so a CN that is not a safe topic segment is refused here,
and the hub reuses :func:`validate_device_id` at enrolment.

All keys are ECDSA P-256. Private keys are created with mode 0600 (never
widened after the fact). Every error is a :class:`PkiError`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT_NAME",
    "CA_KEY_NAME",
    "HUB_PREFIX",
    "CertificateAuthority",
    "IssuedCert",
    "PkiError",
    "create_ca",
    "hub_common_name",
    "issue_device_cert",
    "issue_hub_cert",
    "issue_server_cert",
    "load_ca",
    "validate_common_name",
    "validate_device_id",
    "verify_issued_by",
]

CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"
HUB_PREFIX = "hub-"
MAX_CN_LENGTH = 64  # X.509 ub-common-name
_FORBIDDEN = {"/": "a slash", "+": "an MQTT wildcard '+'", "#": "an MQTT wildcard '#'"}


class PkiError(Exception):
    """A name, key, certificate or file operation was refused or failed."""


@dataclass(frozen=True)
class IssuedCert:
    common_name: str
    cert_path: Path
    key_path: Path
    certificate: x509.Certificate


@dataclass(frozen=True)
class CertificateAuthority:
    cert_path: Path
    key_path: Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def validate_common_name(name: str) -> str:
    """Refuse a CN that is not safe as broker username, client id and topic segment; return it unchanged."""
    if not isinstance(name, str) or not name:
        raise PkiError("common name is empty")
    if len(name) > MAX_CN_LENGTH:
        raise PkiError(f"common name is {len(name)} characters long, at most {MAX_CN_LENGTH} allowed")
    for char, what in _FORBIDDEN.items():
        if char in name:
            raise PkiError(f"common name {name!r} contains {what}")
    if name.startswith("$"):
        raise PkiError(f"common name {name!r} starts with '$' (reserved for broker topics)")
    for char in name:
        category = unicodedata.category(char)
        # C*: control, format (bidi overrides, zero-width), surrogate, private, unassigned; Z*: separators
        if char.isspace() or category[0] in "CZ":
            raise PkiError(f"common name {name!r} contains a control, format or whitespace character {char!r}")
    return name


# The device id alphabet (docs/PROTOCOL.md, "Device ids"): ASCII letters, digits, '.', '_', '-'. Nothing else,
# so no two ids print alike (Cyrillic or fullwidth look-alikes, Unicode normal forms, Unicode hyphens).
DEVICE_ID_ALPHABET = re.compile(r"[A-Za-z0-9._-]+")


def validate_device_id(device_id: str) -> str:
    """A device id is a safe CN in the device id alphabet (ASCII letters, digits, '.', '_', '-', at most 64
    characters) that cannot be mistaken for a hub identity; returns it unchanged. Raises ``PkiError``."""
    validate_common_name(device_id)
    if not DEVICE_ID_ALPHABET.fullmatch(device_id):
        bad = next(c for c in device_id if not DEVICE_ID_ALPHABET.fullmatch(c))
        raise PkiError(f"device id {device_id!r} contains {bad!r} (U+{ord(bad):04X}): a device id is ASCII "
                       "letters, digits, '.', '_' and '-' only")
    if device_id.lower().startswith(HUB_PREFIX):
        raise PkiError(f"device id {device_id!r} starts with {HUB_PREFIX!r} (reserved for hub workers)")
    return device_id


def hub_common_name(name: str) -> str:
    """``hub-<name>`` (a name already carrying the prefix is kept), validated."""
    cn = name if name.startswith(HUB_PREFIX) else HUB_PREFIX + name
    if cn == HUB_PREFIX:
        raise PkiError("hub worker name is empty")
    return validate_common_name(cn)


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey, overwrite: bool) -> None:
    """Create ``path`` with mode 0600 from the first byte on (an old file is removed, not reused)."""
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise PkiError(f"{path} exists; refusing to overwrite a private key (use overwrite/--force)")
        path.unlink()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        raise PkiError(f"cannot create private key file {path}: {exc}") from exc
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(pem)


def _write_cert(path: Path, cert: x509.Certificate, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise PkiError(f"{path} exists; refusing to overwrite (use overwrite/--force)")
    try:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise PkiError(f"cannot write certificate {path}: {exc}") from exc


def _prepare_dir(directory: Path) -> Path:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PkiError(f"cannot create directory {directory}: {exc}") from exc
    return directory


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """CA: sign certificates and CRLs only. Leaf: ECDSA signatures in the TLS handshake only."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    if days < 1:
        raise PkiError(f"validity must be at least one day, got {days}")
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))


def create_ca(
    directory: Path, common_name: str = "Fleet Attestation CA", *, days: int = 3650, overwrite: bool = False
) -> CertificateAuthority:
    """A self-signed P-256 CA written to ``directory/ca.crt`` and ``directory/ca.key``."""
    if not common_name or len(common_name) > MAX_CN_LENGTH:
        raise PkiError(f"CA common name must be 1 to {MAX_CN_LENGTH} characters")
    directory = _prepare_dir(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
    )
    cert = builder.sign(key, hashes.SHA256())
    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    _write_private_key(key_path, key, overwrite)
    _write_cert(cert_path, cert, overwrite)
    return CertificateAuthority(cert_path, key_path, cert, key)


def load_ca(directory: Path) -> CertificateAuthority:
    """Load ``ca.crt`` and ``ca.key`` from ``directory``; the key must match the certificate."""
    cert_path, key_path = directory / CA_CERT_NAME, directory / CA_KEY_NAME
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot load the CA from {directory} (run `pki init-ca` first?): {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise PkiError(f"{key_path} is not the EC private key of {cert_path}")
    return CertificateAuthority(cert_path, key_path, cert, key)


def _issue(
    ca: CertificateAuthority,
    out_dir: Path,
    common_name: str,
    file_stem: str,
    eku: x509.ObjectIdentifier,
    san: Sequence[x509.GeneralName],
    days: int,
    overwrite: bool,
    public_key: ec.EllipticCurvePublicKey | None = None,
) -> IssuedCert:
    out_dir = _prepare_dir(out_dir)
    key = None if public_key is not None else ec.generate_private_key(ec.SECP256R1())
    subject_key = public_key if public_key is not None else key.public_key()  # type: ignore[union-attr]
    builder = (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(subject_key)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    cert_path, key_path = out_dir / f"{file_stem}.crt", out_dir / f"{file_stem}.key"
    if key is not None:  # with a given public key the device keeps its private key; none is written
        _write_private_key(key_path, key, overwrite)
    _write_cert(cert_path, cert, overwrite)
    return IssuedCert(common_name, cert_path, key_path, cert)


def issue_server_cert(
    ca: CertificateAuthority,
    out_dir: Path,
    common_name: str = "localhost",
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    days: int = 825,
    overwrite: bool = False,
) -> IssuedCert:
    """The broker's TLS server certificate (``server.crt``/``server.key``), SAN DNS and IP names."""
    validate_common_name(common_name)
    san: list[x509.GeneralName] = [x509.DNSName(validate_common_name(name)) for name in dns_names]
    for address in ip_addresses:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError as exc:
            raise PkiError(f"not an IP address: {address!r}") from exc
    if not san:
        raise PkiError("a server certificate needs at least one DNS name or IP address")
    return _issue(ca, out_dir, common_name, "server", ExtendedKeyUsageOID.SERVER_AUTH, san, days, overwrite)


def issue_hub_cert(
    ca: CertificateAuthority, out_dir: Path, name: str, *, days: int = 825, overwrite: bool = False
) -> IssuedCert:
    """A hub worker's client certificate, CN ``hub-<name>``, written as ``<cn>.crt``/``<cn>.key``."""
    cn = hub_common_name(name)
    san = [x509.UniformResourceIdentifier(f"urn:fleet-attest:hub:{cn}")]
    return _issue(ca, out_dir, cn, cn, ExtendedKeyUsageOID.CLIENT_AUTH, san, days, overwrite)


def issue_device_cert(
    ca: CertificateAuthority,
    out_dir: Path,
    device_id: str,
    *,
    days: int = 3650,
    overwrite: bool = False,
    public_key: ec.EllipticCurvePublicKey | None = None,
) -> IssuedCert:
    """A device's client certificate, CN = device id, written as ``<device_id>.crt``/``.key``.

    With ``public_key`` the certificate certifies the device's own key (generated on the device)
    and no private key file is written. The SAN URI ``urn:fleet-attest:device:{id}`` makes the
    certificate valid for RFC 5280 client-certificate path validation.
    """
    validate_device_id(device_id)
    san = [x509.UniformResourceIdentifier(f"urn:fleet-attest:device:{device_id}")]
    return _issue(ca, out_dir, device_id, device_id, ExtendedKeyUsageOID.CLIENT_AUTH, san, days, overwrite,
                  public_key)


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate, *, at: dt.datetime | None = None) -> None:
    """Check that ``ca_cert`` signed ``cert`` and that both are valid at ``at`` (now); raises PkiError."""
    when = at or dt.datetime.now(dt.UTC)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PkiError(f"certificate {cert.subject.rfc4514_string()} was not issued by this CA: {exc}") from exc
    for each in (cert, ca_cert):
        if not each.not_valid_before_utc <= when <= each.not_valid_after_utc:
            raise PkiError(f"certificate {each.subject.rfc4514_string()} is not valid at {when.isoformat()}")
