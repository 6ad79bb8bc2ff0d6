"""``attest-hub audit verify / export / show`` and ``report``: tamper cases, exports an auditor can check."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from helpers import HubEnv, build_env, incoming, run_cli
from sqlalchemy import text

from device_sim import firmware
from device_sim.records import Profile
from hub.cli.audit import quarter_bounds


@pytest.fixture
def env(tmp_path: Path) -> Iterator[HubEnv]:
    hub = build_env(tmp_path)
    try:
        yield hub
    finally:
        hub.close()


def run(env: HubEnv, *args: str) -> Result:
    result: Result = run_cli(env, *args)
    return result


def populate(env: HubEnv) -> None:
    """Enrolments, verdicts, a status change to quarantined, a manual quarantine: a realistic log."""
    env.add_device("env-sensor-0001", firmware.ENV_SENSOR)
    env.add_device("env-sensor-0002", firmware.ENV_SENSOR, Profile.TAMPERED)
    env.add_device("smart-meter-0001", firmware.SMART_METER)
    pipeline = env.pipeline()
    for device_id in env.devices:
        pipeline.process([incoming(device_id, env.devices[device_id].make_evidence(env.epoch_nonce))])


def exported_lines(tmp_path: Path) -> list[str]:
    """A real export (used by the docs test's checker too)."""
    hub = build_env(tmp_path)
    try:
        populate(hub)
        result = run(hub, "audit", "export")
        assert result.exit_code == 0, result.output
        return result.stdout.splitlines()
    finally:
        hub.close()


def execute(env: HubEnv, sql: str, **params: Any) -> None:
    with env.store.transaction() as conn:
        conn.execute(text(sql), params)


def test_verify_reports_an_intact_chain(env: HubEnv) -> None:
    populate(env)
    result = run(env, "audit", "verify", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["intact"] and data["entries"] >= 9 and data["problems"] == []


@pytest.mark.parametrize("tamper, expected", [
    ("UPDATE audit SET detail = replace(detail, 'quarantine', 'affirm') WHERE action = 'verdict'", "edited"),
    ("UPDATE audit SET at = at - 3600 WHERE id = 4", "edited"),
    ("UPDATE audit SET actor = 'someone-else' WHERE id = 1", "edited"),
    ("DELETE FROM audit WHERE id = 3", "removed or reordered"),
    ("DELETE FROM audit WHERE id = (SELECT max(id) FROM audit)", "removed from the end"),
    ("UPDATE hub_state SET value = 'x' WHERE key = 'audit_head'", "head"),
    ("DELETE FROM hub_state WHERE key = 'audit_head'", "head of the chain is missing"),
])
def test_verify_detects_tampering(env: HubEnv, tamper: str, expected: str) -> None:
    populate(env)
    execute(env, tamper)
    result = run(env, "audit", "verify")
    assert result.exit_code == 1
    assert "BROKEN" in result.stdout and expected in result.stdout, result.stdout


def test_verify_detects_reordered_entries(env: HubEnv) -> None:
    """Swap the contents of two entries (ids stay in order): both fail their hash."""
    populate(env)
    with env.store.reading() as conn:
        rows = env.store.audit_rows(conn)
    a, b = rows[2], rows[3]
    for target, source in ((a, b), (b, a)):
        execute(env, "UPDATE audit SET at = :at, actor = :actor, action = :action, device_id = :device_id, "
                     "detail = :detail, prev_hash = :prev_hash, entry_hash = :entry_hash WHERE id = :id",
                **{k: source[k] for k in ("at", "actor", "action", "device_id", "detail", "prev_hash",
                                          "entry_hash")}, id=target["id"])
    result = run(env, "audit", "verify", "--json")
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    assert any(f"entry id {a['id']}" in p for p in problems) and any(f"entry id {b['id']}" in p for p in problems)


def test_export_writes_the_chain_and_verifies_as_a_file(env: HubEnv, tmp_path: Path) -> None:
    populate(env)
    out = tmp_path / "q.jsonl"
    result = run(env, "audit", "export", "--quarter", "current", "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"id", "at", "actor", "action", "device_id", "detail", "prev_hash", "entry_hash"} <= set(lines[0])
    assert all(b["prev_hash"] == a["entry_hash"] for a, b in itertools.pairwise(lines))
    assert run(env, "audit", "verify", "--file", str(out)).exit_code == 0
    lines[1]["detail"] = lines[1]["detail"].replace("env-sensor", "smart-meter")
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run(env, "audit", "verify", "--file", str(out))
    assert result.exit_code == 1 and "edited" in result.stdout


def test_export_of_a_period_is_a_run_of_the_chain(env: HubEnv) -> None:
    populate(env)
    execute(env, "UPDATE audit SET at = 1700000000.5 WHERE id <= 3")  # breaks hashes, but not the selection
    inside = run(env, "audit", "export", "--since", "2023-11-14", "--until", "2023-11-15")
    assert [json.loads(line)["id"] for line in inside.stdout.splitlines()] == [1, 2, 3]
    assert run(env, "audit", "export", "--quarter", "2020Q1").stdout == ""
    assert run(env, "audit", "export", "--quarter", "2020Q5").exit_code == 2


def test_quarter_bounds() -> None:
    start, end = quarter_bounds("2026Q1", 0)
    assert (start, end) == (1767225600.0, 1775001600.0)  # 2026-01-01 .. 2026-04-01 UTC
    assert quarter_bounds("2025Q4", 0)[1] == start
    assert quarter_bounds("previous", start + 10) == quarter_bounds("2025Q4", 0)
    assert quarter_bounds("current", start + 10) == (start, end)


def test_show_filters_by_device_and_action(env: HubEnv) -> None:
    populate(env)
    data = json.loads(run(env, "audit", "show", "--device", "env-sensor-0002", "--json").stdout)
    assert {e["device_id"] for e in data} == {"env-sensor-0002"}
    assert [e["detail"]["to"] for e in data if e["action"] == "status"] == ["quarantined"]
    verdicts = json.loads(run(env, "audit", "show", "--action", "verdict", "--json").stdout)
    assert len(verdicts) == 3 and all(v["detail"]["policy"].endswith("@1") for v in verdicts)


def test_report_summarises_the_fleet(env: HubEnv) -> None:
    populate(env)
    env.add_device("smart-meter-0002", firmware.SMART_METER)  # enrolled, never seen
    result = run(env, "report", "--json", "--silent-after", "1h")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["total"] == 4
    assert data["by_status"] == {"enrolled": 1, "quarantined": 1, "trusted": 2}
    assert data["by_class"]["env-sensor"] == {"quarantined": 1, "trusted": 1}
    assert data["firmware"]["smart-meter"] == {"1.2.0": 1, "unknown": 1}
    [quarantine] = data["open_quarantines"]
    assert quarantine["device_id"] == "env-sensor-0002" and "in no manifest" in quarantine["reason"]
    assert 0 <= quarantine["age_s"] < 600
    assert data["silent"] == ["smart-meter-0002"]
    human = run(env, "report")
    assert human.exit_code == 0 and "Open quarantines" in human.stdout and "env-sensor-0002" in human.stdout
    assert run(env, "report", "--silent-after", "soon").exit_code == 2


def test_audit_show_into_a_pipe_keeps_every_line_whole(env: HubEnv) -> None:
    from click.testing import CliRunner

    from hub.cli.main import cli
    from hub.server.localhub import DEMO_OPERATOR_KEY

    populate(env)
    device = "env-sensor-0001"
    reason = "stolen from the depot on the night shift; " * 4 + "end of reason"
    assert run(env, "device", "quarantine", device, "--reason", reason).exit_code == 0

    def show(columns: str | None) -> str:
        result = CliRunner().invoke(cli, ["--state-dir", str(env.settings.state_dir), "audit", "show"],
                                    env={"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY), "COLUMNS": columns},
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return str(result.stdout)

    piped = show(None)  # CliRunner's standard output is no terminal
    (line,) = [line for line in piped.splitlines() if "end of reason" in line]
    assert reason in line and device in line and len(line) > 200, piped
    narrow = show("80")  # a width asked for is still kept
    assert all(len(line) <= 80 for line in narrow.splitlines()), narrow



def test_report_into_a_pipe_keeps_every_line_whole(env: HubEnv) -> None:
    from click.testing import CliRunner

    from hub.cli.main import cli
    from hub.server.localhub import DEMO_OPERATOR_KEY

    populate(env)
    device = "env-sensor-0001"
    reason = "stolen from the depot on the night shift; " * 4 + "end of reason"
    assert run(env, "device", "quarantine", device, "--reason", reason).exit_code == 0

    def report(columns: str | None) -> str:
        result = CliRunner().invoke(cli, ["--state-dir", str(env.settings.state_dir), "report"],
                                    env={"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY), "COLUMNS": columns},
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return str(result.stdout)

    piped = report(None)  # CliRunner's standard output is no terminal
    (line,) = [line for line in piped.splitlines() if "end of reason" in line]
    assert reason in line and device in line and len(line) > 200, piped
    assert "    reason: " not in piped, piped  # nothing moved under its row
    narrow = report("80")  # a width asked for is still kept
    assert all(len(line) <= 80 for line in narrow.splitlines()), narrow
