"""``attest-hub device list`` filters and bulk enrolment from CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import Result
from helpers import SEED, HubEnv, env_fixture, incoming, run_cli

from device_sim import firmware
from device_sim.device import SimDevice
from device_sim.records import Profile
from hub.appraisal.operations import enrol, read_enrolment_csv

env = env_fixture()


def run(env: HubEnv, *args: str) -> Result:
    result: Result = run_cli(env, *args)
    return result


def csv_text(devices: list[SimDevice], key_files: Path | None = None) -> str:
    out = io.StringIO()
    column = "public_key_file" if key_files else "public_key_pem"
    writer = csv.DictWriter(out, ["device_id", "device_class", column, "ueid"])
    writer.writeheader()
    for d in devices:
        if key_files is not None:
            (key_files / f"{d.device_id}.pem").write_bytes(d.public_key_pem)
        writer.writerow({"device_id": d.device_id, "device_class": d.device_class, "ueid": d.ueid.hex(),
                         column: f"{d.device_id}.pem" if key_files else d.public_key_pem.decode()})
    return out.getvalue()


def sims(count: int, device_class: str = firmware.ENV_SENSOR) -> list[SimDevice]:
    return [SimDevice(f"{device_class}-{i:04d}", device_class, Profile.HONEST, seed=SEED) for i in range(1, count + 1)]


def test_enrol_from_csv_with_pem_or_key_files(env: HubEnv, tmp_path: Path) -> None:
    batch = tmp_path / "batch.csv"
    batch.write_text(csv_text(sims(3)))
    result = run(env, "device", "enroll", "--file", str(batch), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"enrolled": 3}
    keys = tmp_path / "keys"
    keys.mkdir()
    second = keys / "batch.csv"
    second.write_text(csv_text(sims(2, firmware.SMART_METER), keys))
    assert run(env, "device", "enroll", "--file", str(second)).exit_code == 0
    with env.store.reading() as conn:
        devices = env.store.list_devices(conn)
    assert len(devices) == 5 and all(d.public_key_pem and d.ueid for d in devices)


def test_a_bad_csv_row_refuses_the_whole_batch(env: HubEnv, tmp_path: Path) -> None:
    batch = tmp_path / "batch.csv"
    batch.write_text(csv_text(sims(3)).replace("env-sensor-0003,", "env/sensor,"))  # a topic separator in an id
    assert "env/sensor," in batch.read_text()
    result = run(env, "device", "enroll", "--file", str(batch))
    assert result.exit_code == 1
    missing = tmp_path / "missing.csv"
    missing.write_text("device_id,public_key_pem\nx,y\n")
    assert "missing column" in run(env, "device", "enroll", "--file", str(missing)).output
    with env.store.reading() as conn:
        assert env.store.list_devices(conn) == []


def test_enrolment_in_chunks_reports_progress_in_one_transaction(env: HubEnv) -> None:
    devices = sims(7)
    entries = read_enrolment_csv(csv_text(devices), Path("."))
    seen: list[int] = []
    assert enrol(env.store, entries, progress=seen.append, chunk=3) == 7
    assert seen == [3, 3, 1]
    with pytest.raises(ValueError, match="already enrolled"):
        enrol(env.store, read_enrolment_csv(csv_text(sims(8)), Path(".")), chunk=3)
    with env.store.reading() as conn:
        assert len(env.store.list_devices(conn)) == 7, "the refused batch wrote nothing"


def test_list_filters(env: HubEnv) -> None:
    env.add_device("env-sensor-0001", firmware.ENV_SENSOR)
    env.add_device("env-sensor-0002", firmware.ENV_SENSOR, version="1.1.0")
    env.add_device("env-sensor-0003", firmware.ENV_SENSOR, Profile.TAMPERED)
    env.add_device("smart-meter-0001", firmware.SMART_METER)  # never seen
    pipeline = env.pipeline()
    for device_id in ("env-sensor-0001", "env-sensor-0002", "env-sensor-0003"):
        pipeline.process([incoming(device_id, env.devices[device_id].make_evidence(env.epoch_nonce))])
    with env.store.transaction() as conn:
        conn.exec_driver_sql("UPDATE device SET last_seen = last_seen - 7200 WHERE device_id = 'env-sensor-0001'")

    def ids(*args: str) -> list[str]:
        result = run(env, "device", "list", *args, "--ids")
        assert result.exit_code == 0, result.output
        return result.stdout.split()

    assert ids() == ["env-sensor-0001", "env-sensor-0002", "env-sensor-0003", "smart-meter-0001"]
    assert ids("--class", "smart-meter") == ["smart-meter-0001"]
    assert ids("--status", "quarantined") == ["env-sensor-0003"]
    assert ids("--firmware", "1.1.0") == ["env-sensor-0002"]
    assert ids("--seen-within", "1h") == ["env-sensor-0002", "env-sensor-0003"]
    assert ids("--not-seen-for", "1h") == ["env-sensor-0001", "smart-meter-0001"]
    assert ids("--class", "env-sensor", "--firmware", "1.2.0", "--status", "trusted") == ["env-sensor-0001"]
    rows = json.loads(run(env, "device", "list", "--status", "quarantined", "--json").stdout)
    assert rows[0]["device_id"] == "env-sensor-0003" and "in no manifest" in rows[0]["problems"][0]
    assert run(env, "device", "list", "--seen-within", "a while").exit_code == 2
    table = run(env, "device", "list")
    assert table.exit_code == 0 and "quarantined" in table.stdout


def test_show_names_manifest_and_policy_of_each_verdict(env: HubEnv) -> None:
    env.add_device("env-sensor-0003", firmware.ENV_SENSOR, Profile.TAMPERED)
    env.pipeline().process([incoming("env-sensor-0003", env.devices["env-sensor-0003"].make_evidence(env.epoch_nonce))])
    data = json.loads(run(env, "device", "show", "env-sensor-0003", "--json").stdout)
    assert data["status"] == "quarantined"
    assert data["verdicts"][0]["manifest"] == "env-sensor#1" and data["verdicts"][0]["policy"] == "env-sensor@1"
    assert run(env, "device", "show", "nobody").exit_code == 1


LONG_ID = "env-sensor-" + "building-7-floor-3-east-wing-rack-12-slot-04"  # 55 characters, within the 64 allowed


def test_list_into_a_pipe_keeps_one_device_per_line(env: HubEnv) -> None:
    """Off a terminal (a pipe, a file) nothing is wrapped or cut, so ``grep`` and ``wc -l`` count devices."""
    from click.testing import CliRunner

    from hub.cli.main import cli
    from hub.server.localhub import DEMO_OPERATOR_KEY

    env.add_device(LONG_ID, firmware.ENV_SENSOR, Profile.TAMPERED)
    env.add_device("env-sensor-0001", firmware.ENV_SENSOR)
    env.add_device("smart-meter-0001", firmware.SMART_METER)
    pipeline = env.pipeline()
    for device_id in (LONG_ID, "env-sensor-0001"):
        pipeline.process([incoming(device_id, env.devices[device_id].make_evidence(env.epoch_nonce))])

    def listed(columns: str | None) -> str:
        result = CliRunner().invoke(cli, ["--state-dir", str(env.settings.state_dir), "device", "list"],
                                    env={"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY), "COLUMNS": columns},
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return str(result.stdout)

    rows = json.loads(run(env, "device", "list", "--json").stdout)
    (problems,) = [r["problems"] for r in rows if r["device_id"] == LONG_ID]
    piped = listed(None)  # CliRunner's standard output is no terminal
    lines = piped.splitlines()
    assert len(lines) == 1 + 3, piped  # the header and one line per device
    (line,) = [line for line in lines if LONG_ID in line]
    assert "; ".join(problems) in line and "quarantined" in line and "firmware" in lines[0], piped
    assert len(line) > 120
    narrow = listed("80")  # a width asked for (a terminal's) is still kept: the problems go under the row
    assert "class" not in narrow.splitlines()[0] and "    problems: " in narrow, narrow
