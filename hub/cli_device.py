"""``attest-hub device``: enrolment, views, manual quarantine and release, revocation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from hub.cli_common import HubContext, emit, fail, json_option, pass_hub
from hub.operations import (
    Enrolment,
    OperationError,
    enrol,
    enrolment_from_certificate,
    publish_once,
    read_enrolment_file,
    revoke,
    set_quarantine,
)
from hub.identity import load_anchors
from hub.keys import KeyFileError
from hub.store import StoreError
from hub.transport import TransportError


@click.group()
def device() -> None:
    """Enrol devices, look at them, quarantine, release and revoke them."""


@device.command("enroll")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Enrolment JSON ({\"devices\": [...]}), e.g. from 'device-sim enrol'.")
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
@json_option
@pass_hub
def enroll(hub: HubContext, file: Path | None, device_id: str | None, device_class: str | None,
           key_path: Path | None, ueid: str | None, cert_path: Path | None, ca_issued: bool) -> None:
    """Register one device, or a whole fleet from a file.

    \b
    Examples:
      attest-hub device enroll --id sensor-0001 --class env-sensor --key sensor-0001.pub.pem
      attest-hub device enroll --class env-sensor --cert sensor-0001.crt
      attest-hub device enroll --file fleet.json
    """
    ueid_bytes = bytes.fromhex(ueid) if ueid else None
    try:
        if file is not None:
            entries = read_enrolment_file(file.read_text())
        elif cert_path is not None and device_class:
            anchors = load_anchors(hub.settings.manufacturer_cas)
            entries = [enrolment_from_certificate(cert_path.read_text(), device_class, anchors, ueid_bytes)]
        elif device_id and device_class and (key_path or ca_issued):
            entries = [Enrolment(device_id, device_class, key_path.read_text() if key_path else None, ueid_bytes)]
        else:
            fail("give --file, or --class with --cert, or --id and --class with --key or --ca-issued")
        count = enrol(hub.store(), entries)
    except (OperationError, ValueError) as exc:
        fail(str(exc))
    except (StoreError, KeyFileError) as exc:
        fail(str(exc), code=3)
    emit(hub, {"enrolled": count}, lambda d: click.echo(f"enrolled {d['enrolled']} device(s)"))


@device.command("list")
@click.option("--class", "device_class", default=None, help="Only this device class.")
@click.option("--status", default=None, help="Only this status (trusted, warning, quarantined, ...).")
@json_option
@pass_hub
def list_devices(hub: HubContext, device_class: str | None, status: str | None) -> None:
    """List devices with status, tier and firmware.  Example: attest-hub device list --status quarantined"""
    store = hub.store()
    with store.reading() as conn:
        devices = store.list_devices(conn)
    rows = [
        {"device_id": d.device_id, "class": d.device_class, "status": d.status, "firmware": d.firmware_version,
         "problems": json.loads(d.last_problems), "last_seen": d.last_seen}
        for d in devices
        if (device_class is None or d.device_class == device_class) and (status is None or d.status == status)
    ]
    emit(hub, rows, _print_devices)


def _print_devices(rows: list[dict[str, Any]]) -> None:
    table = Table("device", "class", "status", "firmware", "problems", "last seen")
    for r in rows:
        seen = time.strftime("%H:%M:%S", time.localtime(r["last_seen"])) if r["last_seen"] else "-"
        table.add_row(r["device_id"], r["class"], r["status"], r["firmware"] or "-",
                      "; ".join(r["problems"])[:80] or "-", seen)
    Console().print(table)


@device.command("show")
@click.argument("device_id")
@json_option
@pass_hub
def show(hub: HubContext, device_id: str) -> None:
    """Identity, status, trust vector and verdict history of one device."""
    store = hub.store()
    with store.reading() as conn:
        record = store.devices(conn, [device_id]).get(device_id)
        if record is None:
            fail(f"unknown device {device_id!r}")
        history = store.verdict_history(conn, device_id)
    data = {
        "device_id": record.device_id, "class": record.device_class, "status": record.status,
        "revoked": record.revoked, "firmware": record.firmware_version,
        "trust_vector": json.loads(record.trust_vector), "problems": json.loads(record.last_problems),
        "bootcount": record.bootcount, "seq": record.seq, "reboots": record.reboots,
        "svn_high_water": record.svn_high_water,
        "verdicts": [{"at": v["received_at"], "scheme": v["scheme"], "evidence": v["dedup_key"],
                      "status": v["status"], "action": v["action"], "problems": json.loads(v["problems"]),
                      "manifest": v["manifest_ref"], "policy": v["policy_ref"]} for v in history],
    }
    emit(hub, data, _print_device)


def _print_device(d: dict[str, Any]) -> None:
    console = Console()
    console.print(f"[bold]{d['device_id']}[/] ({d['class']}): {d['status']}, firmware {d['firmware'] or '-'}")
    console.print(f"trust vector: {d['trust_vector']}  problems: {'; '.join(d['problems']) or '-'}")
    table = Table("time", "scheme", "evidence", "status", "action", "problems", "manifest", "policy")
    for v in d["verdicts"]:
        table.add_row(time.strftime("%H:%M:%S", time.localtime(v["at"])), v["scheme"], v["evidence"][:16],
                      v["status"], v["action"], "; ".join(v["problems"])[:60] or "-", v["manifest"] or "-",
                      v["policy"])
    console.print(table)


def _command(hub: HubContext, device_id: str, quarantine: bool, reason: str) -> None:
    try:
        message = set_quarantine(hub.store(), hub.keys(), device_id, quarantine, reason, hub.settings.command_ttl_s)
        publish_once(hub.settings, [message], f"{hub.settings.hub_id}-cli")
    except OperationError as exc:
        fail(str(exc))
    except (StoreError, TransportError) as exc:
        fail(str(exc), code=3)
    verb = "quarantined" if quarantine else "released"
    emit(hub, {"device_id": device_id, "status": verb}, lambda d: click.echo(f"{d['device_id']} {verb}"))


@device.command("quarantine")
@click.argument("device_id")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@json_option
@pass_hub
def quarantine(hub: HubContext, device_id: str, reason: str) -> None:
    """Quarantine a device until an operator releases it.  Example: device quarantine sensor-0007 --reason 'RMA'"""
    _command(hub, device_id, True, reason)


@device.command("release")
@click.argument("device_id")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@json_option
@pass_hub
def release(hub: HubContext, device_id: str, reason: str) -> None:
    """Release a quarantined device.  Example: device release sensor-0007 --reason 'reflashed'"""
    _command(hub, device_id, False, reason)


@device.command("revoke")
@click.argument("device_id")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@json_option
@pass_hub
def revoke_device(hub: HubContext, device_id: str, reason: str) -> None:
    """Revoke a device's key: its evidence is rejected from now on, even on an open session."""
    try:
        revoke(hub.store(), device_id, reason)
    except OperationError as exc:
        fail(str(exc))
    except StoreError as exc:
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
    from hub.challenge import challenge_and_wait

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
