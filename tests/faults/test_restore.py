"""A restored (rolled-back) database: back up, attest, restore; captured evidence must not be accepted again.

Copying an older ``hub.db`` back lowers every device's (bootcount, seq) high-water mark and the epoch. The hub
refuses to start on it (its generation is behind the state directory's) until ``attest-hub db accept-restore``,
which rotates the nonce secret and moves the epoch on: then every message captured after the backup, replayed
through the broker, is rejected, while the devices attest again as usual.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

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
from hub.config import Settings
from hub.crypto.hubstate import RollbackError, read_generation
from hub.server.localhub import DEMO_OPERATOR_KEY, LocalHub
from hub.server.worker import HubWorker
from tests.e2e import make_env
from tests.faults.rig import FAST_HUB, FaultReport, HubProcess, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _rows(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


def _verdict_count(db: Path) -> int:
    return int(_rows(db, "SELECT count(*) FROM verdict")[0][0])  # type: ignore[arg-type]


def _epoch(db: Path) -> int:
    return int(_rows(db, "SELECT value FROM hub_state WHERE key = 'epoch'")[0][0])  # type: ignore[arg-type]


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


def _serve_refusal(base: list[str]) -> str:
    """``attest-hub serve`` must refuse at once: exit 3 and one line naming the restore procedure."""
    try:
        done = subprocess.run([str(Path(sys.executable).parent / "attest-hub"), *base, "serve"],
                              capture_output=True, text=True, timeout=30,
                              env={**os.environ, "ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY)})
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("serve started on a restored database") from exc
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 3 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "accept-restore" in lines[0]
    return lines[0]


def _capture_after(db: Path, verdict_id: int) -> list[tuple[str, bytes]]:
    return [(str(d), bytes(e)) for d, e in _rows(  # type: ignore[arg-type]
        db, "SELECT device_id, evidence FROM verdict WHERE id > ? ORDER BY id", verdict_id)]


def _generation(db: Path) -> int:
    return int(_rows(db, "SELECT value FROM hub_state WHERE key = 'generation'")[0][0])  # type: ignore[arg-type]


def _recorded(settings: Settings) -> int:
    record = read_generation(settings)
    return record.generation if record else 0


def _accept_and_replay(broker: MosquittoProcess, settings: Settings, base: list[str],
                       captured: list[tuple[str, bytes]], backed_up: int) -> tuple[float, dict[str, Any]]:
    """accept-restore, then a hub on the accepted database: every captured message replayed is rejected.
    Returns the seconds from the restart to the last replay's verdict, and accept-restore's report."""
    accepted = CliRunner().invoke(cli, [*base, "db", "accept-restore", "--json"])
    assert accepted.exit_code == 0, accepted.output
    report: dict[str, Any] = json.loads(accepted.output)
    db = settings.state_dir / "hub.db"
    restarted = time.monotonic()
    with LocalHub(replace(settings, epoch_period_s=3600.0)):
        _replay(broker, captured)
        wait_until(lambda: _verdict_count(db) >= backed_up + len(captured), 20, "verdicts on the replayed messages")
    replayed = _rows(db, "SELECT status, problems FROM verdict WHERE id > ? ORDER BY id", backed_up)
    assert len(replayed) == len(captured)
    assert all(status == "rejected" and "nonce" in str(problems) for status, problems in replayed), replayed
    return round(time.monotonic() - restarted, 2), report


def _restore(backup: Path, db: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, db)


def _hot_backup(db: Path, backup: Path) -> None:
    source, target = sqlite3.connect(db), sqlite3.connect(backup)
    source.backup(target)  # while the hub runs
    source.close()
    target.close()


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
        _hot_backup(db, backup)
        for _ in range(2):
            fleet.publish_round()
            time.sleep(0.3)
        wait_until(lambda: _verdict_count(db) >= 9, 15, "the verdicts after the backup")
    backed_up = int(_rows(backup, "SELECT max(id) FROM verdict")[0][0])  # type: ignore[arg-type]
    captured = [(str(d), bytes(e)) for d, e, s in _rows(  # type: ignore[arg-type]
        db, "SELECT device_id, evidence, status FROM verdict WHERE id > ? ORDER BY id", backed_up)]
    assert len(captured) == 6
    assert {s for *_, s in _rows(db, "SELECT status FROM verdict WHERE id > ?", backed_up)} == {"affirming"}

    _restore(backup, db)

    with pytest.raises(RollbackError, match="accept-restore"):
        HubWorker(settings)
    runner = CliRunner()
    base = ["--state-dir", str(settings.state_dir), "--broker", f"{broker.host}:{broker.port}"]
    assert "behind generation" in _serve_refusal(base)
    for command in (["device", "list"], ["audit", "verify"]):
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
    fault_reports.append(FaultReport("restored database", 12, 12 + len(captured), 0,
                                     round(time.monotonic() - restarted, 2),
                                     f"{len(captured)} captured messages replayed: each a rejected verdict"))


def test_a_database_restored_together_with_its_state_dir_is_caught_by_the_announced_epoch(
        broker: MosquittoProcess, tmp_path: Path, fault_reports: list[FaultReport]) -> None:
    """A machine snapshot: the database and the state directory's generation record go back together, so the
    generation agrees; the hub-signed epoch retained on the broker is newer than the database's, and serve
    refuses; accept-restore moves the epoch past the announced one and the captured evidence is rejected."""
    env = make_env(broker, tmp_path, 2, "honest:2", database_url="", epoch_period_s=1.0, **FAST_HUB)
    settings = env.settings
    db = settings.state_dir / "hub.db"
    with LocalHub(settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        fleet.publish_round()
        wait_until(lambda: _verdict_count(db) >= 2, 15, "the first verdicts")
        _hot_backup(db, tmp_path / "backup.db")
        shutil.copy(settings.generation_path, tmp_path / "generation.json")
        backup_epoch = _epoch(tmp_path / "backup.db")
        wait_until(lambda: _epoch(db) >= backup_epoch + 2, 10, "two epoch advances")
        fleet.wait_for(lambda: all(d.epoch is not None and d.epoch.epoch_id >= backup_epoch + 2
                                   for d in env.devices), 5)
        fleet.publish_round()
        wait_until(lambda: _verdict_count(db) >= 4, 15, "the verdicts after the backup")
    backed_up = int(_rows(tmp_path / "backup.db", "SELECT max(id) FROM verdict")[0][0])  # type: ignore[arg-type]
    captured = _capture_after(db, backed_up)
    assert len(captured) >= 2
    _restore(tmp_path / "backup.db", db)
    shutil.copy(tmp_path / "generation.json", settings.generation_path)

    base = ["--state-dir", str(settings.state_dir), "--broker", f"{broker.host}:{broker.port}"]
    assert "announced on the broker" in _serve_refusal(base)
    recovery_s, report = _accept_and_replay(broker, settings, base, captured, backed_up)
    assert report["epoch"] > backup_epoch + 2
    fault_reports.append(FaultReport("restored database and state dir", len(captured), len(captured), 0,
                                     recovery_s,
                                     "caught by the announced epoch; the replayed messages, all rejected"))


def test_a_machine_snapshot_after_a_clean_stop_is_caught_by_the_published_generation(
        broker: MosquittoProcess, tmp_path: Path, fault_reports: list[FaultReport]) -> None:
    """The state dir and its database copied together after a clean stop; the hub runs again and attests, with
    no epoch advance; then the copy goes back. The state dir agrees with the database and the announced epoch
    did not move: only the generation checkpoint the hub published, signed and retained, is newer."""
    env = make_env(broker, tmp_path, 2, "honest:2", database_url="", **FAST_HUB)
    settings = env.settings
    db = settings.state_dir / "hub.db"
    with LocalHub(settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        fleet.publish_round()
        wait_until(lambda: _verdict_count(db) >= 2, 15, "the first verdicts")
    snapshot = tmp_path / "snapshot"
    shutil.copytree(settings.state_dir, snapshot)  # the whole machine, cold, after a clean stop
    epoch = _epoch(db)
    with LocalHub(settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        fleet.publish_round()
        wait_until(lambda: _verdict_count(db) >= 4, 15, "the verdicts after the snapshot")
    assert _epoch(db) == epoch, "no epoch advance: the announced epoch cannot tell"
    backed_up = int(_rows(snapshot / "hub.db", "SELECT max(id) FROM verdict")[0][0])  # type: ignore[arg-type]
    captured = _capture_after(db, backed_up)
    assert len(captured) == 2
    shutil.rmtree(settings.state_dir)
    shutil.copytree(snapshot, settings.state_dir)

    base = ["--state-dir", str(settings.state_dir), "--broker", f"{broker.host}:{broker.port}"]
    assert "published on the broker" in _serve_refusal(base)
    recovery, _report = _accept_and_replay(broker, settings, base, captured, backed_up)
    fault_reports.append(FaultReport("machine snapshot, no epoch advance", len(captured), len(captured), 0,
                                     recovery, "caught by the published generation; replayed messages rejected"))


def test_a_hot_backup_restored_after_a_crash_is_caught_by_the_generation_timer(
        broker: MosquittoProcess, tmp_path: Path, fault_reports: list[FaultReport]) -> None:
    """A hot backup of the database, the hub attests on, then dies (SIGKILL: no generation step at a clean
    stop, no epoch advance); the backup goes back. The generation the leader steps every generation_period_s
    has moved past the backup's, so the restore is refused."""
    env = make_env(broker, tmp_path, 2, "honest:2", database_url="", **FAST_HUB)
    settings = env.settings
    db = settings.state_dir / "hub.db"
    backup = tmp_path / "backup.db"
    hub = HubProcess(env, extra_env={"ATTEST_HUB_GENERATION_PERIOD_S": "1"}).start()
    assert hub.proc is not None
    try:
        with Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
            assert fleet.wait_for_epoch(20) is not None, hub.log_tail()
            fleet.publish_round()
            wait_until(lambda: _verdict_count(db) >= 2, 15, "the first verdicts")
            _hot_backup(db, backup)
            backed_up_generation = _generation(backup)
            wait_until(lambda: _recorded(settings) > backed_up_generation, 10, "a generation step on the timer")
            fleet.publish_round()
            wait_until(lambda: _verdict_count(db) >= 4, 15, "the verdicts after the backup")
    finally:
        os.killpg(hub.proc.pid, signal.SIGKILL)  # a crash
        hub.proc.wait()
    backed_up = int(_rows(backup, "SELECT max(id) FROM verdict")[0][0])  # type: ignore[arg-type]
    captured = _capture_after(db, backed_up)
    assert len(captured) == 2
    _restore(backup, db)

    base = ["--state-dir", str(settings.state_dir), "--broker", f"{broker.host}:{broker.port}"]
    assert "behind generation" in _serve_refusal(base)
    recovery, _report = _accept_and_replay(broker, settings, base, captured, backed_up)
    fault_reports.append(FaultReport("hot backup restored after a crash", len(captured), len(captured), 0,
                                     recovery, "caught by the generation timer; replayed messages rejected"))
