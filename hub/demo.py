"""``attest-hub demo``: a broker, the hub and a simulated fleet, then a verdict table.

Everything runs on embedded defaults: Mosquitto from broker_config/dev.conf
on a free loopback port, SQLite in a temporary state directory, the signed
manifests and policies from firmware_manifests/. Everything started is
stopped at the end.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hub.broker_process import MosquittoProcess
from hub.config import load_settings
from hub.keys import public_pem
from hub.localhub import LocalHub, enrol_all, prepare_state
from hub.operations import Enrolment
from hub.store import Store

DEMO_MIX = "honest:40,tampered:3,rollback:3,replay:2,forged:2,data-mitm:2,data-drop:2,data-reorder:2,data-restart:2"
EXPECTED = {
    "honest": "trusted",
    "tampered": "quarantined",
    "rollback": "quarantined",
    "replay": "trusted, stale copy rejected",
    "forged": "evidence rejected, not quarantined",
    "data-mitm": "altered batches rejected, never republished",
    "data-drop": "data gap: warning",
    "data-reorder": "gap warning, late batch not republished",
    "data-restart": "chain restart: quarantined",
}


def run_demo(devices: int, seconds: float, keep: Path | None) -> int:
    from device_sim.fleet import Fleet
    from device_sim.profiles import build_fleet

    console = Console()
    work = keep or Path(tempfile.mkdtemp(prefix="attest-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]Fleet attestation demo[/]: {devices} devices for {seconds:.0f}s (state in {work})")
    with MosquittoProcess("dev.conf", work / "broker") as broker:
        settings = load_settings(None, environ={}, state_dir=work / "hub", broker_host=broker.host,
                                 broker_port=broker.port, epoch_period_s=60.0)
        settings = prepare_state(settings)
        fleet_devices = build_fleet(devices, DEMO_MIX, seed="demo")
        enrol_all(settings, [Enrolment(d.device_id, d.device_class, d.public_key_pem.decode(), d.ueid)
                             for d in fleet_devices])
        console.print(f"broker on {broker.host}:{broker.port}; enrolled {devices} devices; starting the hub")
        hub = LocalHub(settings).start()
        hub_key = public_pem(hub.workers[0].keys.public_key).encode()
        fleet = Fleet(broker.host, broker.port, fleet_devices, hub_key, interval=max(1.0, seconds / 8), data=True)
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
        finally:
            fleet.stop()
            hub.stop()
        table = _table(settings.effective_database_url, fleet_devices)
    console.print(table)
    if keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


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
        profile = sim.profile.value if sim.data_profile.value == "honest" else f"data-{sim.data_profile.value}"
        record = records[device_id]
        data = [v for v in histories[device_id] if v["scheme"] == "data"]
        history = [v for v in histories[device_id] if v["scheme"] != "data"]
        data_ok = sum(1 for v in data if v["status"] in ("affirming", "warning"))
        data_problem = next((p for v in data for p in json.loads(v["problems"])), "-")
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
                      data_problem[:50], obeys)
    table.caption = f"{quarantined} of {len(fleet_devices)} devices quarantined"
    return table
