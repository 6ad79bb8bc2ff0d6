"""A restored (rolled-back) database: back up, attest, restore; captured evidence must not be accepted again.

Copying an older ``hub.db`` back lowers every device's (bootcount, seq) high-water mark and the epoch. The hub
refuses to start on it (its generation is behind the state directory's) until ``attest-hub db accept-restore``,
which rotates the nonce secret and moves the epoch on: then every message captured after the backup, replayed
through the broker, is rejected, while the devices attest again as usual.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sim.fleet import Fleet
from hub import wire
from hub.broker.process import MosquittoProcess
from hub.cli.main import cli
from hub.crypto.hubstate import RollbackError
from hub.server.localhub import LocalHub
from hub.server.worker import HubWorker
from tests.e2e import make_env
from tests.faults.rig import FAST_HUB, FaultReport, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _rows(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


def _verdict_count(db: Path) -> int:
    return int(_rows(db, "SELECT count(*) FROM verdict")[0][0])  # type: ignore[arg-type]


def _replay(broker: MosquittoProcess, captured: list[tuple[str, bytes]]) -> None:
    """The attacker re-publishes what they captured, byte for byte, on each device's evidence topic."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="replayer", protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for device_id, payload in captured:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = wire.FIRMWARE_MEDIA_TYPE
            client.publish(wire.device_topic(device_id, wire.EVIDENCE), payload, qos=1,
                           properties=props).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_back_up_attest_restore_and_every_captured_message_is_rejected(
        broker: MosquittoProcess, tmp_path: Path, fault_reports: list[FaultReport]) -> None:
    env = make_env(broker, tmp_path, 3, "honest:3", database_url="", **FAST_HUB)
    settings = env.settings
    db = settings.state_dir / "hub.db"
    backup = tmp_path / "backup.db"
    with LocalHub(settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        fleet.publish_round()
        wait_until(lambda: _verdict_count(db) >= 3, 15, "the first round's verdicts")
        source, target = sqlite3.connect(db), sqlite3.connect(backup)
        source.backup(target)  # a hot backup, while the hub runs
        source.close()
        target.close()
        for _ in range(2):
            fleet.publish_round()
            time.sleep(0.3)
        wait_until(lambda: _verdict_count(db) >= 9, 15, "the verdicts after the backup")
    backed_up = int(_rows(backup, "SELECT max(id) FROM verdict")[0][0])  # type: ignore[arg-type]
    captured = [(str(d), bytes(e)) for d, e, s in _rows(  # type: ignore[arg-type]
        db, "SELECT device_id, evidence, status FROM verdict WHERE id > ? ORDER BY id", backed_up)]
    assert len(captured) == 6
    assert {s for *_, s in _rows(db, "SELECT status FROM verdict WHERE id > ?", backed_up)} == {"affirming"}

    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, db)  # the restore

    with pytest.raises(RollbackError, match="accept-restore"):
        HubWorker(settings)
    runner = CliRunner()
    base = ["--state-dir", str(settings.state_dir), "--broker", f"{broker.host}:{broker.port}"]
    for command in (["serve"], ["device", "list"], ["audit", "verify"]):
        refused = runner.invoke(cli, [*base, *command])
        assert refused.exit_code == 3, (command, refused.output)
        assert "accept-restore" in refused.output and len(refused.output.strip().splitlines()) == 1
        assert refused.exception is None or isinstance(refused.exception, SystemExit)

    secret_before = settings.nonce_secret_path.read_bytes()
    accepted = runner.invoke(cli, [*base, "db", "accept-restore", "--json"])
    assert accepted.exit_code == 0, accepted.output
    report = json.loads(accepted.output)
    assert report["generation"] > report["recorded_generation"] > report["database_generation"]
    assert report["epoch"] > report["epoch_before"] and report["lost_audit_entries"] > 0
    assert settings.nonce_secret_path.read_bytes() != secret_before
    assert runner.invoke(cli, [*base, "audit", "verify"]).exit_code == 0

    restarted = time.monotonic()
    with LocalHub(settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        _replay(broker, captured)
        wait_until(lambda: _verdict_count(db) >= backed_up + len(captured), 20, "verdicts on the replayed messages")
        replayed = _rows(db, "SELECT status, problems FROM verdict WHERE id > ? ORDER BY id", backed_up)
        assert len(replayed) == len(captured)
        assert all(status == "rejected" and "nonce" in str(problems) for status, problems in replayed), replayed
        # The devices themselves carry on: the new epoch nonce reaches them, their fresh evidence is affirmed.
        assert fleet.wait_for(lambda: all(d.epoch is not None and d.epoch.epoch_id == int(report["epoch"])
                                          for d in env.devices), 10)
        fleet.publish_round()
        wait_until(lambda: _verdict_count(db) >= backed_up + len(captured) + 3, 15, "fresh verdicts")
        fresh = _rows(db, "SELECT status FROM verdict WHERE id > ?", backed_up + len(captured))
        assert {s for (s,) in fresh} == {"affirming"}
    actions = [a for (a,) in _rows(db, "SELECT action FROM audit ORDER BY id")]
    assert "accept-restore" in actions
    fault_reports.append(FaultReport("restored database", 9, 9 + len(captured) + 3, 0,
                                     round(time.monotonic() - restarted, 2),
                                     f"{len(captured)} captured messages replayed, all rejected"))
