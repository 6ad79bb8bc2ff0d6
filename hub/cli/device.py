"""``attest-hub device``: enrolment, views, manual quarantine and release, revocation."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hub import wire
from hub.anomaly.records import findings
from hub.appraisal.operations import (
    Enrolment,
    OperationError,
    enrol,
    enrolment_from_certificate,
    publish_once,
    read_enrolment_bytes,
    revoke,
    set_quarantine,
    validate_device_id,
)
from hub.appraisal.transitions import ENROLLED, MISSED, QUARANTINED, REVOKED, TRUSTED, WARNING
from hub.broker.enforcement import EnforcementError, enforcer_from_settings
from hub.broker.transport import TransportError
from hub.cli.anomalies import finding_view
from hub.cli.common import HubContext, broker_address, emit, fail, json_option, pass_hub
from hub.cli.output import DURATION, Column, format_table, iso_time, json_time
from hub.crypto.hubkeys import MAC_KEY_SIZE, HubKeyError, write_device_mac_key
from hub.crypto.keys import KeyFileError
from hub.envelope import Outgoing
from hub.reference.identity import load_anchors
from hub.store import StoreError


@click.group()
def device() -> None:
    """Enrol devices, look at them, quarantine, release and revoke them."""


@device.command("enroll")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Enrolment JSON ({\"devices\": [...]}, e.g. from 'device-sim enrol') or CSV (*.csv: columns "
                   "device_id, device_class, public_key_pem or public_key_file, ueid).")
@click.option("--id", "device_id", default=None, help="Device id (= certificate CN = topic segment).")
@click.option("--class", "device_class", default=None, help="Device class (selects manifest and policy).")
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The device's public key (PEM).")
@click.option("--ueid", default=None, help="UEID to bind (hex).")
@click.option("--cert", "cert_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The device's certificate chain (PEM, leaf first); it must chain to a configured manufacturer "
                   "CA and its CN is the device id.")
@click.option("--ca-issued", is_flag=True,
              help="Enrol without a key: the device presents an x5chain to a manufacturer CA with its evidence.")
@click.option("--mac-key", "mac_key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A symmetric key (32 bytes, raw or as 64 hex digits) for a PSA platform that MACs "
                                 "its tokens (COSE_Mac0, HMAC 256/256); kept owner-only in the state directory.")
@click.option("--allow-unknown-class", is_flag=True,
              help="Enrol even if no manifest or policy of the class is stored yet (its evidence is then "
                   "appraised with the built-in default policy and fails until a manifest is published).")
@json_option
@pass_hub
def enroll(hub: HubContext, file: Path | None, device_id: str | None, device_class: str | None,
           key_path: Path | None, ueid: str | None, cert_path: Path | None, ca_issued: bool,
           mac_key_path: Path | None, allow_unknown_class: bool) -> None:
    """Register one device, or a whole fleet from a file.

    \b
    Examples:
      attest-hub device enroll --id sensor-0001 --class env-sensor --key sensor-0001.pub.pem
      attest-hub device enroll --class env-sensor --cert sensor-0001.crt
      attest-hub device enroll --file fleet.json
      attest-hub device enroll --file batch-0042.csv
      attest-hub device enroll --id psa-0001 --class psa-sensor --mac-key psa-0001.hmac --ueid 01...
    """
    try:
        ueid_bytes = bytes.fromhex(ueid) if ueid else None
    except ValueError:
        fail(f"--ueid: {ueid!r} is not hexadecimal")
    if ca_issued and not hub.settings.manufacturer_cas:
        fail("--ca-issued enrols a device that proves its identity with a certificate chain to a manufacturer CA, "
             "but no manufacturer_cas are configured, so it could never attest; set manufacturer_cas first, or "
             "enrol its key with --key")
    mac_key = _read_mac_key(mac_key_path) if mac_key_path is not None else None
    if mac_key is not None and (key_path or ca_issued or file or cert_path):
        fail("--mac-key enrols one device by --id and --class, without --key, --ca-issued, --cert or --file")
    try:
        if file is not None:
            entries = read_enrolment_bytes(file.read_bytes(), str(file), file.parent)
        elif cert_path is not None and device_class:
            anchors = load_anchors(hub.settings.manufacturer_cas)
            entries = [enrolment_from_certificate(cert_path.read_text(), device_class, anchors, ueid_bytes)]
        elif device_id and device_class and (key_path or ca_issued or mac_key):
            entries = [Enrolment(device_id, device_class, key_path.read_text() if key_path else None, ueid_bytes)]
        else:
            fail("give --file, or --class with --cert, or --id and --class with --key, --mac-key or --ca-issued")
        unknown = sorted({e.device_class for e in entries} - known_classes(hub))
        if unknown and not allow_unknown_class:
            fail(f"unknown device class {', '.join(map(repr, unknown))}: no manifest or policy is stored for it "
                 f"(known: {', '.join(sorted(known_classes(hub))) or 'none'}); publish its manifest first, or "
                 "give --allow-unknown-class", unknown_classes=unknown)
        if mac_key is not None and device_id:
            validate_device_id(device_id)
            written = write_device_mac_key(hub.settings, device_id, mac_key)  # refused if one exists already
            try:
                count = _enrol_with_progress(hub, entries)
            except BaseException:
                written.unlink(missing_ok=True)  # not enrolled: no key left behind for the id
                raise
        else:
            count = _enrol_with_progress(hub, entries)
    except (OperationError, ValueError, HubKeyError) as exc:
        fail(str(exc))
    except (StoreError, KeyFileError) as exc:
        fail(str(exc), code=3)
    emit(hub, {"enrolled": count}, lambda d: click.echo(f"enrolled {d['enrolled']} device(s)"))


def _read_mac_key(path: Path) -> bytes:
    data = path.read_bytes()
    text = data.strip()
    if len(text) == 2 * MAC_KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(data) != MAC_KEY_SIZE:
        fail(f"{path}: a MAC key is {MAC_KEY_SIZE} bytes, raw or as {2 * MAC_KEY_SIZE} hex digits")
    return data


def _enrol_with_progress(hub: HubContext, entries: list[Enrolment]) -> int:
    """One transaction, written in chunks; a progress bar on a terminal (stderr) for big batches."""
    console = Console(stderr=True)

    def warn(message: str) -> None:
        click.echo(f"warning: {message}", err=True)

    if hub.as_json or not console.is_terminal or len(entries) < 100:
        return enrol(hub.store(), entries, warn=warn)
    with Progress(TextColumn("enrolling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("enrol", total=len(entries))
        return enrol(hub.store(), entries, progress=lambda n: progress.advance(task, n), warn=warn)


def _shown(at: str | None, local: bool) -> str:
    """A JSON time (ISO 8601 UTC) as the table shows it: UTC, or the local zone with --local-time."""
    if at is None:
        return "-"
    return iso_time(dt.datetime.fromisoformat(at).timestamp(), local) if local else at


STATUSES = (ENROLLED, TRUSTED, WARNING, QUARANTINED, MISSED, REVOKED)


def known_classes(hub: HubContext) -> set[str]:
    """Device classes the hub knows: a stored manifest or policy, or an enrolled device of the class."""
    store = hub.store()
    with store.reading() as conn:
        known = set(store.latest_manifests(conn)) | set(store.latest_policies(conn))
        known |= {d.device_class for d in store.list_devices(conn)}
    return known


@device.command("list")
@click.option("--class", "device_class", default=None, help="Only this device class.")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only this status.")
@click.option("--firmware", default=None, help="Only devices that last attested this firmware version.")
@click.option("--seen-within", type=DURATION, default=None, metavar="DURATION",
              help="Only devices seen in the last DURATION (15m, 6h, 2d).")
@click.option("--not-seen-for", type=DURATION, default=None, metavar="DURATION",
              help="Only devices not seen for DURATION or more (or never).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many devices (a page).")
@click.option("--after", "after", default=None, metavar="DEVICE_ID",
              help="Only devices whose id sorts after this one (the next page: the last id of the previous).")
@click.option("--ids", "ids_only", is_flag=True, help="Print only the device ids, one per line (for scripts).")
@json_option
@pass_hub
def list_devices(hub: HubContext, device_class: str | None, status: str | None, firmware: str | None,
                 seen_within: float | None, not_seen_for: float | None, limit: int | None, after: str | None,
                 ids_only: bool) -> None:
    """List devices, sorted by id, with status, firmware, problems and when they were last seen (UTC).

    On a narrow terminal the class and firmware columns are left out before an id would be cut; --json has
    every field. With --limit, the line after the table names the next page's --after.

    \b
    Examples:
      attest-hub device list --status quarantined
      attest-hub device list --class smart-meter --firmware 1.1.0
      attest-hub device list --not-seen-for 2d --ids
      attest-hub device list --limit 500 --after env-sensor-0500 --json
    """
    if device_class is not None and device_class not in known_classes(hub):
        fail(f"unknown device class {device_class!r} (known: {', '.join(sorted(known_classes(hub))) or 'none'})")
    now = time.time()
    store = hub.store()
    with store.reading() as conn:
        devices = store.list_devices(conn)
    selected = [
        d for d in devices
        if (after is None or d.device_id > after)
        and (device_class is None or d.device_class == device_class) and (status is None or d.status == status)
        and (firmware is None or d.firmware_version == firmware)
        and (seen_within is None or (d.last_seen is not None and now - d.last_seen <= seen_within))
        and (not_seen_for is None or d.last_seen is None or now - d.last_seen >= not_seen_for)
    ]
    more = limit is not None and len(selected) > limit
    selected = selected[:limit]
    rows = [{"device_id": d.device_id, "device_class": d.device_class, "status": d.status,
             "firmware": d.firmware_version, "problems": json.loads(d.last_problems),
             "last_seen": json_time(d.last_seen)}
            for d in selected]
    if ids_only and not hub.as_json:
        click.echo("".join(f"{r['device_id']}\n" for r in rows), nl=False)
    else:
        emit(hub, rows, lambda r: _print_devices(r, hub.local_time))
    if more and not hub.as_json:
        click.echo(f"more: --after {rows[-1]['device_id']}", err=True)


def _print_devices(rows: list[dict[str, Any]], local: bool) -> None:
    if not rows:
        click.echo("no devices")
        return
    columns = [Column("device"), Column("class", drop=2), Column("status"), Column("firmware", drop=1),
               Column("last seen"), Column("problems", wrap=True)]
    click.echo(format_table(columns, [
        [r["device_id"], r["device_class"], r["status"], r["firmware"] or "-", _shown(r["last_seen"], local),
         "; ".join(r["problems"]) or "-"] for r in rows]), nl=False)


@device.command("show")
@click.argument("device_id")
@json_option
@pass_hub
def show(hub: HubContext, device_id: str) -> None:
    """Identity, status, trust vector and verdict history of one device (times in UTC).

    Example: attest-hub device show env-sensor-0007
    """
    store = hub.store()
    with store.reading() as conn:
        record = store.devices(conn, [device_id]).get(device_id)
        if record is None:
            fail(f"unknown device {device_id!r}")
        history = store.verdict_history(conn, device_id)
        found = findings(conn, open_only=False, device_id=device_id, limit=20)
    data = {
        "device_id": record.device_id, "device_class": record.device_class, "status": record.status,
        "revoked": record.revoked, "firmware": record.firmware_version,
        "trust_vector": json.loads(record.trust_vector), "problems": json.loads(record.last_problems),
        "bootcount": record.bootcount, "seq": record.seq, "reboots": record.reboots,
        "svn_high_water": record.svn_high_water,
        "verdicts": [{"at": json_time(v["received_at"]), "scheme": v["scheme"], "evidence": v["dedup_key"],
                      "status": v["status"], "action": v["action"], "problems": json.loads(v["problems"]),
                      "manifest": v["manifest_ref"], "policy": v["policy_ref"]} for v in history],
        "anomalies": [finding_view(f) for f in found],
    }
    emit(hub, data, lambda d: _print_device(d, hub.local_time))


def _print_device(d: dict[str, Any], local: bool) -> None:
    click.echo(f"{d['device_id']} ({d['device_class']}): {d['status']}, firmware {d['firmware'] or '-'}"
               + (", revoked" if d["revoked"] else ""))
    vector = d["trust_vector"]
    shown = ", ".join(f"{k} {v}" for k, v in vector.items()) if isinstance(vector, dict) else str(vector)
    click.echo(f"trust vector: {shown or '-'}")
    click.echo(f"problems: {'; '.join(d['problems']) or '-'}")
    if d["verdicts"]:
        columns = [Column("time"), Column("scheme"), Column("status"), Column("action", drop=1),
                   Column("problems", wrap=True), Column("evidence", drop=2), Column("manifest", drop=3),
                   Column("policy", drop=4)]
        click.echo(format_table(columns, [
            [_shown(v["at"], local), v["scheme"], v["status"], v["action"], "; ".join(v["problems"]) or "-",
             v["evidence"], v["manifest"] or "-", v["policy"] or "-"] for v in d["verdicts"]]), nl=False)
    for f in d.get("anomalies", []):  # hub/cli/anomalies.py
        state = "open" if f["open"] else f"closed by {f['closed_by']}"
        click.echo(f"anomaly #{f['id']} {f['kind']} score {f['score']:.2f} ({state}): {f['explanation']}")


def _command(hub: HubContext, device_id: str, quarantine: bool, reason: str) -> None:
    try:
        message = set_quarantine(hub.store(), hub.keys(), device_id, quarantine, reason, hub.settings.command_ttl_s,
                                 enforcer=enforcer_from_settings(hub.settings))
    except OperationError as exc:
        fail(str(exc))
    except (StoreError, EnforcementError) as exc:
        fail(str(exc), code=3)
    verb = "quarantined" if quarantine else "released"
    broker = broker_address(hub)
    try:
        publish_once(hub.settings, [message], f"{hub.settings.hub_id}-cli")
    except TransportError as exc:
        retry = f"attest-hub device resend {device_id}"
        fail(f"{device_id} is {verb} (recorded in the database and the audit log), but the command was not sent "
             f"to the device: {exc}. To send it once the broker at {broker} is back: {retry}",
             code=3, device_id=device_id, status=verb, sent=False, broker=broker, retry=retry)
    emit(hub, {"device_id": device_id, "status": verb, "sent": True, "broker": broker},
         lambda d: click.echo(f"{d['device_id']} {verb}; command sent through the broker at {d['broker']}"))


@device.command("resend")
@click.argument("device_id")
@json_option
@pass_hub
def resend(hub: HubContext, device_id: str) -> None:
    """Send a device's latest quarantine or release command again (as signed when it was issued), e.g. after
    the broker was down when it was given.

    Example: attest-hub --broker 127.0.0.1:1883 device resend env-sensor-0007
    """
    store = hub.store()
    try:
        with store.reading() as conn:
            command = store.latest_state_command(conn, device_id)
    except StoreError as exc:
        fail(str(exc), code=3)
    if command is None:
        fail(f"no quarantine or release command was given for {device_id!r}")
    broker = broker_address(hub)
    message = Outgoing(wire.device_topic(device_id, wire.COMMAND), command["signed"], retain=True)
    try:
        publish_once(hub.settings, [message], f"{hub.settings.hub_id}-cli")
    except TransportError as exc:
        fail(f"the {command['kind']} command for {device_id} was not sent: {exc}", code=3, broker=broker)
    emit(hub, {"device_id": device_id, "command": command["kind"], "seq": command["seq"], "sent": True,
               "broker": broker},
         lambda d: click.echo(f"{d['device_id']}: {d['command']} command #{d['seq']} sent through the broker at "
                              f"{d['broker']}"))


def _nonblank(reason: str) -> str:
    if not reason.strip():
        raise click.BadParameter("give the reason (it is kept in the audit log), not an empty text")
    return reason


@device.command("quarantine")
@click.argument("device_id")
@click.option("--reason", required=True, callback=lambda _c, _p, v: _nonblank(v), help="Why (kept in the audit log).")
@json_option
@pass_hub
def quarantine(hub: HubContext, device_id: str, reason: str) -> None:
    """Quarantine a device until an operator releases it.  Example: device quarantine sensor-0007 --reason 'RMA'"""
    _command(hub, device_id, True, reason)


@device.command("release")
@click.argument("device_id")
@click.option("--reason", required=True, callback=lambda _c, _p, v: _nonblank(v), help="Why (kept in the audit log).")
@json_option
@pass_hub
def release(hub: HubContext, device_id: str, reason: str) -> None:
    """Release a quarantined device.  Example: device release sensor-0007 --reason 'reflashed'"""
    _command(hub, device_id, False, reason)


@device.command("revoke")
@click.argument("device_id")
@click.option("--reason", required=True, callback=lambda _c, _p, v: _nonblank(v), help="Why (kept in the audit log).")
@json_option
@pass_hub
def revoke_device(hub: HubContext, device_id: str, reason: str) -> None:
    """Revoke a device's key: its evidence is rejected from now on, even on an open session.

    Example: attest-hub device revoke env-sensor-0007 --reason "key extracted"
    """
    try:
        revoke(hub.store(), device_id, reason, enforcer=enforcer_from_settings(hub.settings))
    except OperationError as exc:
        fail(str(exc))
    except (StoreError, EnforcementError) as exc:
        fail(str(exc), code=3)
    emit(hub, {"device_id": device_id, "status": "revoked"}, lambda d: click.echo(f"{d['device_id']} revoked"))


@device.command("challenge")
@click.argument("device_id")
@click.option("--wait", "wait_s", type=click.FloatRange(1, 600), default=15.0, show_default=True,
              help="Seconds to wait for the device's answer and the hub's verdict.")
@json_option
@pass_hub
def challenge(hub: HubContext, device_id: str, wait_s: float) -> None:
    """Attest a device now: send a single-use nonce, wait for the verdict on its answer.

    Exit 0 if the fresh evidence is affirmed, 1 if not, 4 if no answer came in time.
    Example: attest-hub device challenge env-sensor-0001 --wait 10
    """
    from hub.appraisal.challenge import challenge_and_wait

    try:
        outcome = challenge_and_wait(hub.settings, hub.store(), hub.keys(), device_id, wait_s)
    except OperationError as exc:
        fail(str(exc))
    except (StoreError, TransportError) as exc:
        fail(str(exc), code=3)
    data = {"device_id": device_id, "nonce": outcome.nonce.hex(), "answered": outcome.answered,
            "status": outcome.status, "problems": list(outcome.problems), "action": outcome.action}
    emit(hub, data, lambda d: click.echo(
        f"{device_id}: " + ("no answer within the wait" if not d["answered"] else
                            f"status {d['status']} action {d['action']} {'; '.join(d['problems'])}")))
    if not outcome.answered:
        raise SystemExit(4)
    if outcome.status != 2:
        raise SystemExit(1)
