"""``attest-hub demo``: a broker, the hub and a simulated fleet, then a verdict table.

Everything runs on embedded defaults: Mosquitto from broker_config/prod.conf
(mutual TLS, the ACL file) on a free loopback port with a CA, server, hub and
per-device certificates made in a temporary directory, SQLite there too, the
signed manifests and policies from firmware_manifests/. The hub enforces
quarantine at the broker (acl_file + SIGHUP, or with ``--enforcement dynsec``
the dynamic-security plugin over MQTT, prod-dynsec.conf) and remediates firmware, so the
demo shows a compromised device that ignores its quarantine command being cut
off by the broker (its data publishes get PUBACK 0x87 on the session it
already had open) and quarantined devices that install an approved release
coming back. Everything started is stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hub.appraisal.operations import Enrolment
from hub.broker.dynsec import initial_config
from hub.broker.process import MosquittoProcess, find_dynsec_plugin, free_port, render_acl
from hub.cli.anomalies import findings_table
from hub.config import load_settings
from hub.crypto import pki
from hub.crypto.hubstate import open_store
from hub.crypto.keys import public_pem
from hub.resources import data_path_or_default
from hub.server.localhub import LocalHub, enrol_all, prepare_state
from hub.store import Store

DEMO_MIX = ("honest:40,tampered:3,rollback:3,replay:2,forged:2,ignores-commands:3,"
            "data-mitm:2,data-drop:2,data-reorder:2,data-restart:2")
EXPECTED = {
    "honest": "trusted",
    "tampered": "quarantined, remediated, released",
    "rollback": "quarantined, remediated, released",
    "ignores-commands": "quarantined; cut off by the broker",
    "replay": "trusted, stale copy rejected",
    "forged": "evidence rejected, not quarantined",
    # the man in the middle holds a valid certificate of its own, so the broker's ACL refuses its altered copies
    # on the victims' data topics (PUBACK 0x87): the hub never sees them and warns of the gaps they leave
    "data-mitm": "altered copies refused by the broker (0x87): data gap",
    "data-drop": "data gap: warning",
    "data-reorder": "gap warning, late batch not republished",
    "data-restart": "chain restart: quarantined, held for an operator",
    "tpm-honest": "trusted (TPM quote, PCR 0 matches 1.2.0)",
    "tpm-tampered": "quarantined (boot PCR matches no release), remediated, released",
    "psa-honest": "trusted (PSA token)",
    "psa-debug": "quarantined (lifecycle not secured)",
}


def run_demo(devices: int, seconds: float, keep: Path | None, enforcement: str = "acl-file",
             linger: float = 0.0) -> int:
    """``devices``: the whole fleet, its TPM-backed gateways and PSA platforms included (at least one device
    is software-signed); ``enforcement``: ``acl-file`` (prod.conf, the ACL file and SIGHUP: the hub on the
    broker's host) or
    ``dynsec`` (prod-dynsec.conf, the dynamic-security plugin over MQTT: as from any other host); ``linger``:
    seconds the hub and its console stay up after the fleet stops."""
    from device_sim.fleet import Fleet
    from device_sim.profiles import build_fleet

    console = Console(width=None if sys.stdout.isatty() else 200)
    logging.getLogger("device_sim").setLevel(logging.CRITICAL)  # the devices' own complaints are in the tables
    work = keep or Path(tempfile.mkdtemp(prefix="attest-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]Fleet attestation demo[/]: {devices} devices for {seconds:.0f}s (state in {work})")
    hardware, missing = _hardware_devices(devices - 1)
    if missing:
        console.print(f"TPM-backed gateways left out: {missing}", markup=False)
    fleet_devices: list[Any] = [*build_fleet(devices - len(hardware), DEMO_MIX, seed="demo"), *hardware]
    tls, values, hub_tls = _pki(work / "pki", [d.device_id for d in fleet_devices])
    template = "prod.conf"
    if enforcement == "dynsec":
        template = "prod-dynsec.conf"
        dynsec_file = work / "dynamic-security.json"
        dynsec_file.write_text(json.dumps(initial_config([pki.hub_common_name("w0")])), encoding="utf-8")
        values.update(dynsec_plugin=find_dynsec_plugin(), dynsec_file=str(dynsec_file))
    with MosquittoProcess(template, work / "broker", values=values) as broker:
        if enforcement == "dynsec":
            control: dict[str, Any] = {"broker_enforcement": "dynsec"}
        else:
            pid_file = work / "mosquitto.pid"
            pid_file.write_text(f"{broker.pid}\n", encoding="ascii")
            control = {"broker_enforcement": "acl-file", "broker_acl_file": values["acl_file"],
                       "broker_pid_file": str(pid_file)}
        settings = load_settings(None, environ={}, state_dir=work / "hub", broker_host=broker.host,
                                 broker_port=broker.port, epoch_period_s=60.0, **control,
                                 remediation=True, metrics_port=free_port(), anomaly_interval_s=2.0,
                                 anomaly_settle_s=1.0, **hub_tls)
        settings = prepare_state(settings)
        enrol_all(settings, [Enrolment(d.device_id, d.device_class, d.public_key_pem.decode(), d.ueid)
                             for d in fleet_devices])
        tpm = sum(1 for d in hardware if hasattr(d, "tpm_profile"))
        kinds = f"{len(fleet_devices) - len(hardware)} software-signed, {tpm} TPM-backed on swtpm, " \
                f"{len(hardware) - tpm} PSA"
        console.print(f"mutual-TLS broker on {broker.host}:{broker.port} ({template}, enforcement: {enforcement}); "
                      f"enrolled {len(fleet_devices)} devices ({kinds}); starting the hub")
        hub = LocalHub(settings).start()
        dashboard = data_path_or_default("dashboard")
        console_token = _console_token(settings)
        console.print(f"[bold]console[/]: http://{settings.metrics_host}:{settings.metrics_port}/console/ "
                      f"(sign in with {console_token}; API document at /v1/schema)")
        console.print(f"metrics: http://{settings.metrics_host}:{settings.metrics_port}/metrics (Grafana: "
                      f"{dashboard}); findings: attest-hub --state-dir {work / 'hub'} anomalies (with --keep)")
        hub_key = public_pem(hub.workers[0].keys.public_key).encode()
        fleet = Fleet(broker.host, broker.port, fleet_devices, hub_key, interval=max(1.0, seconds / 8), data=True,
                      tls=tls)
        try:
            fleet.start()
            if fleet.wait_for_epoch(10) is None:
                console.print("[red]the fleet never received a signed epoch nonce[/]")
                return 1
            fleet.start_publishing()
            time.sleep(seconds)
            fleet.stop_publishing()
            fleet.flush(5)
            time.sleep(1.0)
            if linger > 0:
                console.print(f"the fleet has stopped; the console stays up for {linger:.0f}s "
                              f"(Ctrl-C ends it): http://{settings.metrics_host}:{settings.metrics_port}/console/")
                with contextlib.suppress(KeyboardInterrupt):
                    time.sleep(linger)
        finally:
            fleet.stop()
            hub.stop()
            for device in fleet_devices:
                if hasattr(device, "close"):
                    device.close()
        table = _table(settings.effective_database_url, fleet_devices)
        cut_off = _enforcement_table(settings.effective_database_url, fleet, broker.log_path)
        anomaly_findings = findings_table(settings.effective_database_url)
    console.print(table)
    console.print(cut_off)
    console.print(anomaly_findings)
    if keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _console_token(settings: Any) -> str:
    """An operate-scope token for the demo's console (the demo's database is thrown away afterwards)."""
    from hub.server.api.tokens import create_token

    store = open_store(settings)
    try:
        return create_token(store, "demo-operator", "operate", ttl_s=24 * 3600, actor="demo")[0]
    finally:
        store.close()


def _hardware_devices(room: int) -> tuple[list[Any], str]:
    """Two TPM-backed gateways (each on its own swtpm) and two PSA platforms: one honest, one not, of each;
    at most ``room`` devices in all (the PSA platforms first, honest before dishonest).

    Returns the devices and, when the TPM gateways cannot run here (the ``tpm`` extra, i.e. tpm2-pytss, or
    the swtpm program is missing), why they were left out; the PSA platforms need neither.
    """
    from device_sim.psa import build_psa_fleet

    psa = build_psa_fleet(min(2, max(room, 0)), "honest:1,debug:1", seed="demo")
    tpm_room = min(2, room - len(psa))
    if tpm_room <= 0:
        return psa, ""
    if shutil.which("swtpm") is None:
        return psa, "swtpm is not installed (Debian package swtpm)"
    try:
        from device_sim.tpm import TpmDeviceError, TpmProfile, build_tpm_fleet
    except (ImportError, OSError) as exc:  # the tpm extra is missing, or its C library (libtss2) is
        return psa, f"tpm2-pytss is not usable ({exc}); install the extra: pip install 'fleet-attestation-hub[tpm]'"
    try:
        return [*build_tpm_fleet([TpmProfile.HONEST, TpmProfile.TAMPERED][:tpm_room], seed="demo"), *psa], ""
    except TpmDeviceError as exc:
        return psa, f"swtpm did not start ({exc})"


def _pki(out: Path, device_ids: Sequence[str]) -> tuple[Any, dict[str, str], dict[str, str]]:
    """CA, server, hub-w0 and per-device certificates; the ACL with hub-w0 listed."""
    from device_sim.fleet import FleetTls

    ca = pki.create_ca(out, "Demo Fleet CA")
    server = pki.issue_server_cert(ca, out)
    hub_cert = pki.issue_hub_cert(ca, out, "w0")
    mitm = pki.issue_device_cert(ca, out, "mitm-on-the-path")  # a valid identity, but not the victims'
    certs = {d: pki.issue_device_cert(ca, out, d) for d in device_ids}
    acl = out / "acl"
    acl.write_text(render_acl(["w0"]), encoding="utf-8")
    values = {"cafile": str(ca.cert_path), "certfile": str(server.cert_path), "keyfile": str(server.key_path),
              "acl_file": str(acl)}
    tls = FleetTls(str(ca.cert_path), {d: (str(c.cert_path), str(c.key_path)) for d, c in certs.items()},
                   (str(mitm.cert_path), str(mitm.key_path)))
    hub_tls = {"broker_tls_ca": str(ca.cert_path), "broker_tls_cert": str(hub_cert.cert_path),
               "broker_tls_key": str(hub_cert.key_path)}
    return tls, values, hub_tls


def _enforcement_table(database_url: str, fleet: Any, broker_log: Path) -> Table:
    """Per quarantined or remediated device: what the broker did with its data, and its transitions."""
    log = broker_log.read_text(encoding="utf-8", errors="replace")
    store = Store(database_url)
    try:
        with store.reading() as conn:
            audit = store.audit_rows(conn)
    finally:
        store.close()
    table = Table(title="Broker enforcement and remediation")
    for column in ("device", "profile", "data PUBACKs (accepted, then 0x87 denied)", "sessions",
                   "transitions (reason / evidence)"):
        table.add_column(column)
    for sim in fleet.devices:
        steps = [_step(row) for row in audit if row["device_id"] == sim.device_id
                 and row["action"] in ("status", "remediating")]
        if not any("-> quarantined" in step for step in steps):
            continue
        codes = fleet.data_reason_codes(sim.device_id)
        accepted = sum(1 for c in codes if c in (0x00, 0x10))
        denied = sum(1 for c in codes if c == 0x87)
        sessions = len(re.findall(rf"New client connected from \S+ as {re.escape(sim.device_id)} ", log))
        style = "red" if denied else "green"
        profile = _profile(sim)
        table.add_row(sim.device_id, profile, f"[{style}]{accepted} accepted, {denied} denied[/]",
                      str(sessions), "\n".join(steps))
    table.caption = ("a device that ignores its quarantine is refused its data on the session it has (with dynsec a "
                     "later role change, such as a release, ends the session); a remediated device is released")
    return table


def _profile(sim: Any) -> str:
    if hasattr(sim, "tpm_profile"):
        return f"tpm-{sim.tpm_profile.value}"
    if hasattr(sim, "psa_profile"):
        return f"psa-{sim.psa_profile.value}"
    return str(sim.profile.value if sim.data_profile.value == "honest" else f"data-{sim.data_profile.value}")


def _step(row: dict[str, Any]) -> str:
    detail = json.loads(row["detail"])
    if row["action"] == "remediating":
        return f"remediating: install {detail['release']} (evidence {detail['evidence']})"
    reason = str(detail.get("reason", ""))[:50]
    return f"{detail['from']} -> {detail['to']}: {reason} (evidence {detail.get('evidence', '-')})"


def _table(database_url: str, fleet_devices: Sequence[Any]) -> Table:
    store = Store(database_url)
    try:
        with store.reading() as conn:
            records = {d.device_id: d for d in store.list_devices(conn)}
            histories = {d: store.verdict_history(conn, d, limit=200) for d in records}
    finally:
        store.close()
    table = Table(title="Verdicts (hub) and what each device did (simulator)")
    for column in ("device", "profile", "expected", "hub status", "verdicts ok/rejected", "reason",
                   "data ok/rejected", "data problem", "device obeys"):
        table.add_column(column)
    quarantined = 0
    for sim in fleet_devices:
        device_id = sim.device_id
        profile = _profile(sim)
        record = records[device_id]
        data = [v for v in histories[device_id] if v["scheme"] == "data"]
        history = [v for v in histories[device_id] if v["scheme"] != "data"]
        data_ok = sum(1 for v in data if v["status"] in ("affirming", "warning"))
        data_problem = next((p.split(":")[0] for v in data for p in json.loads(v["problems"])), "-")
        ok = sum(1 for v in history if v["authenticated"] and v["status"] != "rejected")
        rejected = len(history) - ok
        reasons: list[str] = json.loads(record.last_problems) or next(
            (json.loads(v["problems"]) for v in history if v["status"] == "rejected"), []
        )
        status = record.status
        quarantined += status == "quarantined"
        obeys = "quarantined" if sim.quarantined else "-"
        style = {"trusted": "green", "quarantined": "red", "warning": "yellow"}.get(status, "")
        table.add_row(device_id, profile, EXPECTED.get(profile, "?"), f"[{style}]{status}[/]" if style else status,
                      f"{ok}/{rejected}", "; ".join(reasons)[:70] or "-", f"{data_ok}/{len(data) - data_ok}",
                      data_problem, obeys)
    table.caption = f"{quarantined} of {len(fleet_devices)} devices quarantined"
    return table
