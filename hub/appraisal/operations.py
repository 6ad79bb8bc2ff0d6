"""Operator actions: enrolment, manifests, manual quarantine and release, revocation.

Each action is one transaction that also appends its audit entry. Actions
that must reach a device return the signed messages to publish; the CLI
publishes them through the broker (``publish_once``).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from hub import wire
from hub.appraisal import transitions
from hub.appraisal.messages import Command
from hub.audit import AuditDraft, append
from hub.broker.enforcement import BrokerEnforcer
from hub.config import Settings
from hub.crypto import pki
from hub.crypto.cose import CoseError, decode_sign1, sign1, verify_sign1
from hub.crypto.hubkeys import HubKeys
from hub.crypto.keys import KeyFileError, load_public_pem, public_pem
from hub.envelope import Outgoing
from hub.reference.manifests import Manifest, verify_manifest
from hub.reference.policy import Policy, load_policy
from hub.store.db import DEVICES, DeviceRecord, Store

log = logging.getLogger(__name__)


class OperationError(ValueError):
    """An operator action cannot be carried out; the message says why."""


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A device to register. Without a public key the device must present an ``x5chain`` chaining
    to a configured manufacturer CA with every piece of evidence (CA-issued identity)."""

    device_id: str
    device_class: str
    public_key_pem: str | None
    ueid: bytes | None = None
    certificate_pem: str | None = None


def validate_device_id(device_id: str, what: str = "device id") -> str:
    """The device id is a topic segment, a certificate CN and a kid: refuse anything that could collide.
    The message calls the value ``what`` (the operator gave a device id or a class, not a common name)."""
    try:
        return pki.validate_device_id(device_id)
    except pki.PkiError as exc:
        message = str(exc)
        for name in ("common name", "device id"):
            message = message.replace(name, what, 1) if message.startswith(name) else message
        raise OperationError(message) from exc


def enrol(store: Store, entries: Iterable[Enrolment], actor: str = "operator", *,
          progress: Callable[[int], None] | None = None, chunk: int = 500,
          warn: Callable[[str], None] | None = None) -> int:
    """Register devices (all or none); re-enrolling an existing id is refused (use key rotation).

    Ids are in the device id alphabet (docs/PROTOCOL.md), and an id that differs from another (enrolled or in
    this batch) only by case is refused. Public keys are stored in canonical form (SubjectPublicKeyInfo PEM);
    a key that another device (enrolled or in this batch) already has is allowed but ``warn`` (default: the
    log) is told, since one key for many devices means one stolen key impersonates them all.
    Rows are written in chunks of ``chunk`` inside one transaction; ``progress`` is told each chunk's size.
    """
    now = time.time()
    records = []
    for entry in entries:
        validate_device_id(entry.device_id)
        validate_device_id(entry.device_class, "device class")
        pem = None
        try:
            if entry.public_key_pem is not None:
                pem = public_pem(load_public_pem(entry.public_key_pem))  # canonical: one text per key
        except KeyFileError as exc:
            raise OperationError(f"{entry.device_id}: {exc}") from exc
        if entry.ueid is not None and not 7 <= len(entry.ueid) <= 33:
            raise OperationError(f"{entry.device_id}: ueid must be 7..33 bytes")
        records.append(DeviceRecord(entry.device_id, entry.device_class, pem, ueid=entry.ueid,
                                    certificate_pem=entry.certificate_pem, enrolled_at=now))
    ids = [r.device_id for r in records]
    if len(set(ids)) != len(ids):
        raise OperationError("the enrolment lists a device id twice")
    _check_lookalikes_and_shared_keys(store, records, warn or log.warning)
    with store.transaction() as conn:
        existing = store.devices(conn, ids)
        if existing:
            raise OperationError(f"already enrolled: {', '.join(sorted(existing)[:5])}")
        for start in range(0, len(records), chunk):
            part = records[start:start + chunk]
            store.insert_devices(conn, part)
            append(store, conn, [AuditDraft(now, actor, "enrol", r.device_id, {"class": r.device_class})
                                 for r in part])
            if progress is not None:
                progress(len(part))
    return len(records)


def _check_lookalikes_and_shared_keys(store: Store, records: Sequence[DeviceRecord],
                                      warn: Callable[[str], None]) -> None:
    """Refuse ids equal to another but for case; warn about keys shared between devices. One pass over the
    enrolled devices (a read, outside the write transaction), then the batch itself."""
    folded = {r.device_id.casefold(): r.device_id for r in records}
    if len(folded) != len(records):
        seen: dict[str, str] = {}
        for r in records:
            other = seen.setdefault(r.device_id.casefold(), r.device_id)
            if other != r.device_id:
                raise OperationError(f"{r.device_id!r} and {other!r} differ only by case: device ids must be "
                                     "unique regardless of case")
    holders: dict[str, list[str]] = {}
    for r in records:
        if r.public_key_pem is not None:
            holders.setdefault(r.public_key_pem, []).append(r.device_id)
    with store.reading() as conn:
        for device_id, pem in conn.execute(DEVICES.select().with_only_columns(DEVICES.c.device_id,
                                                                               DEVICES.c.public_key_pem)):
            twin = folded.get(str(device_id).casefold())
            if twin is not None and twin != device_id:
                raise OperationError(f"{twin!r} differs from the enrolled {device_id!r} only by case: device ids "
                                     "must be unique regardless of case")
            if pem is not None and pem in holders:
                holders[pem].append(str(device_id))
    for devices in holders.values():
        if len(devices) > 1:
            shown = ", ".join(sorted(devices)[:5]) + (f" and {len(devices) - 5} more" if len(devices) > 5 else "")
            warn(f"one public key is enrolled for {len(devices)} devices ({shown}): a device key should be unique, "
                 "or one extracted key impersonates every device that shares it")


def read_enrolment_file(text: str, name: str = "") -> list[Enrolment]:
    """The simulator's (and a manufacturer's) enrolment JSON: {"devices": [{device_id, device_class,
    public_key_pem, ueid (hex, optional)}]}. Every entry needs its public key (a device enrolled from a file
    has no other way to authenticate); OperationError names the file (``name``), the entry and what is wrong."""
    label = f"enrolment file {name}" if name else "enrolment file"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OperationError(f"{label}: not JSON (invalid at line {exc.lineno}, column {exc.colno}); expected "
                             'the object {"devices": [...]} that device-sim enrol writes') from exc
    except RecursionError as exc:
        raise OperationError(f"{label}: not an enrolment document (nested too deeply)") from exc
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(devices, list):
        raise OperationError(f'{label}: expected a JSON object {{"devices": [{{"device_id": ..., '
                             '"device_class": ..., "public_key_pem": ...}, ...]}')
    entries = []
    for number, d in enumerate(devices, 1):
        where = f"{label}, device {number}"
        if not isinstance(d, dict):
            raise OperationError(f"{where}: expected an object with device_id, device_class and public_key_pem")
        missing = [k for k in ("device_id", "device_class", "public_key_pem") if not d.get(k)]
        if missing:
            raise OperationError(f"{where}{' (' + str(d['device_id']) + ')' if d.get('device_id') else ''}: "
                                 f"missing {', '.join(missing)}")
        try:
            ueid = bytes.fromhex(str(d["ueid"])) if d.get("ueid") else None
        except ValueError as exc:
            raise OperationError(f"{where} ({d['device_id']}): ueid is not hexadecimal") from exc
        entries.append(Enrolment(str(d["device_id"]), str(d["device_class"]), str(d["public_key_pem"]), ueid))
    return entries


def read_enrolment_bytes(data: bytes, name: str, base_dir: Path) -> list[Enrolment]:
    """An enrolment file as stored: ``*.csv`` as CSV, anything else as JSON; decoded as ``utf-8-sig`` (a
    byte-order mark is dropped). OperationError names what is wrong."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OperationError(f"enrolment file {name}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if name.lower().endswith(".csv"):
        return read_enrolment_csv(text, base_dir)
    return read_enrolment_file(text, name)


def read_enrolment_csv(text: str, base_dir: Path) -> list[Enrolment]:
    """A manufacturer's CSV: header ``device_id,device_class`` plus ``public_key_pem`` (the PEM text) or
    ``public_key_file`` (relative to the CSV, inside its folder), and optionally ``ueid`` (hex). Errors name
    the line.

    A leading UTF-8 byte-order mark (what spreadsheet programs write for "CSV UTF-8") is dropped, as the
    ``utf-8-sig`` codec does; ``read_enrolment_bytes`` decodes a file that way."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff")))
    missing = {"device_id", "device_class"} - set(reader.fieldnames or ())
    if missing:
        raise OperationError(f"enrolment CSV: missing column(s) {', '.join(sorted(missing))}")
    entries = []
    for row in reader:
        where = f"enrolment CSV line {reader.line_num}"
        try:
            pem = (row.get("public_key_pem") or "").strip() or None
            if pem is None and (row.get("public_key_file") or "").strip():
                pem = _confined(base_dir, row["public_key_file"].strip()).read_text()
            ueid = bytes.fromhex(row["ueid"]) if (row.get("ueid") or "").strip() else None
        except (OSError, ValueError) as exc:
            raise OperationError(f"{where}: {exc}") from exc
        if not row["device_id"] or not row["device_class"]:
            raise OperationError(f"{where}: device_id and device_class are required")
        if pem is None:
            raise OperationError(f"{where}: no public key for {row['device_id'].strip()!r}: give public_key_pem "
                                 "or public_key_file (a device enrolled from a file has no other way to "
                                 "authenticate)")
        entries.append(Enrolment(row["device_id"].strip(), row["device_class"].strip(), pem, ueid))
    return entries


def _confined(base_dir: Path, name: str) -> Path:
    """``name`` inside ``base_dir`` (the CSV's folder), symbolic links resolved; anything else is refused."""
    folder = base_dir.resolve()
    path = (folder / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(folder):
        raise OperationError(f"public_key_file {name!r} is outside the CSV's folder {folder}: key files must be "
                             "next to the CSV (or below it)")
    return path


def enrolment_from_certificate(cert_pem: str, device_class: str, anchors: Sequence[x509.Certificate],
                               ueid: bytes | None = None) -> Enrolment:
    """Enrol by manufacturer certificate: the chain must verify to an anchor; the device id is its CN."""
    from hub.reference.identity import IdentityError, common_name, verify_chain

    try:
        chain = x509.load_pem_x509_certificates(cert_pem.encode())
        device_id = common_name(chain[0])
        key = verify_chain(chain, anchors, device_id)
    except (ValueError, IdentityError) as exc:
        raise OperationError(f"certificate: {exc}") from exc
    return Enrolment(device_id, device_class, public_pem(key), ueid, cert_pem)


def import_manifest(store: Store, settings_keys: HubKeys, signed: bytes, actor: str = "operator") -> Manifest:
    """Verify and store a signed manifest; refuse one not newer than the stored one."""
    manifest = verify_manifest(signed, settings_keys.operator_keys)
    with store.transaction() as conn:
        if not store.save_manifest(conn, manifest.device_class, manifest.sequence, manifest.signer, signed):
            raise OperationError(
                f"manifest {manifest.device_class}#{manifest.sequence} is not newer than the one stored"
            )
        append(store, conn, [AuditDraft(time.time(), actor, "manifest", None,
                                        {"class": manifest.device_class, "sequence": manifest.sequence})])
    return manifest


def manifest_announcement(manifest: Manifest) -> Outgoing:
    return Outgoing(wire.manifest_topic(manifest.device_class), manifest.signed, retain=True)


def import_policy(store: Store, source: str, actor: str = "operator") -> Policy:
    """Validate and store a new policy version; refuse one not newer than the stored one."""
    policy = load_policy(source)
    with store.transaction() as conn:
        if not store.save_policy(conn, policy.device_class, policy.version, source):
            raise OperationError(f"policy {policy.ref} is not newer than the one stored")
        append(store, conn, [AuditDraft(time.time(), actor, "policy", None, {
            "class": policy.device_class, "version": policy.version,
            "sha256": hashlib.sha256(source.encode()).hexdigest()})])
    return policy


def policy_announcement(policy: Policy, source: str, keys: HubKeys) -> Outgoing:
    """A policy for the workers: the TOML source, COSE_Sign1-signed by the hub key, retained per class."""
    signed = sign1(source.encode(), keys.signing_key, kid=keys.kid, content_type=wire.POLICY_PROFILE)
    return Outgoing(wire.policy_topic(policy.device_class), signed, retain=True)


def read_policy_announcement(raw: bytes, keys: HubKeys) -> str:
    """The policy source of an announcement signed by this hub's key (the kid, alg and type protected)."""
    try:
        message = decode_sign1(raw, max_bytes=256 * 1024)
        if message.kid is None or not hmac.compare_digest(message.kid, keys.kid):
            raise OperationError("policy announcement not signed by this hub's key")
        if message.protected.get(wire.HDR_CONTENT_TYPE) != wire.POLICY_PROFILE:
            raise OperationError("not a policy announcement")
        verify_sign1(message, keys.public_key)
        return message.payload.decode("utf-8")
    except (CoseError, UnicodeDecodeError) as exc:
        raise OperationError(f"policy announcement rejected: {exc}") from exc


def set_quarantine(store: Store, keys: HubKeys, device_id: str, quarantine: bool, reason: str,
                   ttl_s: int, actor: str = "operator", *, enforcer: BrokerEnforcer | None = None) -> Outgoing:
    """Manual quarantine (held until an operator releases) or release; returns the signed command.

    After the commit, ``enforcer`` (the hub workers' own path, hub/broker/enforcement.py) cuts the device
    off at the broker or readmits it; its EnforcementError reaches the caller.
    """
    if not reason.strip():
        raise OperationError("a reason is required")
    now = time.time()
    with store.transaction() as conn:
        device = store.devices(conn, [device_id], lock=True).get(device_id)
        if device is None:
            raise OperationError(f"unknown device {device_id!r}")
        if device.revoked:
            raise OperationError(f"{device_id} is revoked")
        if quarantine == (device.status == transitions.QUARANTINED):
            raise OperationError(f"{device_id} is {'already' if quarantine else 'not'} quarantined")
        kind = wire.COMMAND_QUARANTINE if quarantine else wire.COMMAND_RELEASE
        old = device.status
        device.status = transitions.QUARANTINED if quarantine else transitions.ENROLLED
        device.quarantine_hold = quarantine
        device.command_seq += 1
        command = Command(device_id, kind, device.command_seq, int(now), int(now) + ttl_s, reason[:500])
        signed = command.sign(keys.signing_key, keys.kid)
        store.save_devices(conn, [device])
        store.insert_commands(conn, [{"device_id": device_id, "seq": command.seq, "kind": kind,
                                      "reason": reason[:500], "issued_at": now,
                                      "expires_at": float(command.expires_at), "signed": signed}])
        append(store, conn, [AuditDraft(now, actor, kind, device_id, {"from": old, "to": device.status,
                                                                    "reason": reason})])
    if enforcer is not None:
        (enforcer.quarantine if quarantine else enforcer.release)(device_id)
    return Outgoing(wire.device_topic(device_id, wire.COMMAND), signed, retain=True)


def revoke(store: Store, device_id: str, reason: str, actor: str = "operator", *,
           enforcer: BrokerEnforcer | None = None) -> None:
    """Revoke a device's key: its evidence is rejected from the next batch on, live session or not.

    With an ``enforcer`` the broker also stops accepting its data (as for a quarantine), so a revoked
    device with a live session cannot keep feeding consumers either. Raises ``OperationError`` for a blank
    ``reason`` (every operator action on a device is audited with why) or an unknown device."""
    if not reason.strip():
        raise OperationError("a reason is required")
    now = time.time()
    with store.transaction() as conn:
        device = store.devices(conn, [device_id], lock=True).get(device_id)
        if device is None:
            raise OperationError(f"unknown device {device_id!r}")
        device.revoked = True
        old, device.status = device.status, transitions.REVOKED
        device.key_version += 1
        store.save_devices(conn, [device])
        append(store, conn, [AuditDraft(now, actor, "revoke", device_id, {"from": old, "reason": reason[:500]})])
    if enforcer is not None:
        enforcer.revoke(device_id)


def publish_once(settings: Settings, messages: Sequence[Outgoing], client_id: str, timeout: float = 10.0) -> None:
    """Publish signed messages through the broker and wait for the PUBACKs (used by CLI commands)."""
    from hub.broker.transport import BrokerAddress, MqttTransport, TransportError

    transport = MqttTransport(BrokerAddress(settings.broker_host, settings.broker_port, client_id,
                                            session_expiry_s=0, tls_ca=settings.broker_tls_ca,
                                            tls_cert=settings.broker_tls_cert, tls_key=settings.broker_tls_key), [])
    transport.start(timeout)
    try:
        if not transport.publish_all(messages, timeout):
            raise TransportError("the broker did not acknowledge the publish in time")
    finally:
        transport.stop()

