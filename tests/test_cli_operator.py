"""The operator CLI's rough edges: every command's help has an example, --json on every data command with JSON
errors, 80-column tables that never cut an id, paging, ISO 8601 UTC times, validated enumerations, durations and
classes, one field name for the device class, and re-announcing manifests when the broker was down."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner, Result
from helpers import SEED, HubEnv, build_env, env_fixture

from device_sim.device import SimDevice
from device_sim.records import Profile
from hub.broker.process import MosquittoProcess, free_port
from hub.cli.main import cli
from hub.cli.output import Column, format_table
from hub.server.localhub import DEMO_OPERATOR_KEY, MANIFESTS_DIR

HUB = str(Path(sys.executable).parent / "attest-hub")
LONG = "env-sensor-0000000000000000000000000000001"  # 42 characters: longer than rich would ever leave uncut

# Commands that print no data for scripts (a service, a broker, a demo) or whose output is a format of its own.
NO_JSON = {
    "serve": "a service: logs, JSON lines off a terminal",
    "demo": "a show for people",
    "broker run": "execs Mosquitto",
    "config reference": "prints Markdown (docs/SETTINGS.md)",
    "api": "a service: serves JSON over HTTP",
}


def _leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _leaves(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


COMMANDS = dict(_leaves(cli))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_help_has_an_example(name: str) -> None:
    result = CliRunner().invoke(cli, [*name.split(), "--help"], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"'attest-hub {name} --help' shows no example"
    examples = result.output.split("Example", 1)[1]
    assert "attest-hub" in examples or "device" in examples


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_data_command_has_json(name: str) -> None:
    options = {opt for param in COMMANDS[name].params for opt in getattr(param, "opts", [])}
    assert ("--json" in options) != (name in NO_JSON), name


env = env_fixture()


def run(env: HubEnv, *args: str, columns: int = 80, **extra: str) -> Result:
    environ = {"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY), "COLUMNS": str(columns), **extra}
    return CliRunner().invoke(cli, ["--state-dir", str(env.settings.state_dir), *args], env=environ,
                              catch_exceptions=False)


def enrol_file(tmp_path: Path, ids: list[str], device_class: str = "env-sensor") -> Path:
    devices = [SimDevice(i, "env-sensor", Profile.HONEST, seed=SEED) for i in ids]
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"devices": [{"device_id": d.device_id, "device_class": device_class,
                                             "public_key_pem": d.public_key_pem.decode()} for d in devices]}))
    return path


def seen(env: HubEnv, device_id: str, at: float, problems: list[str]) -> None:
    with env.store.transaction() as conn:
        conn.exec_driver_sql("UPDATE device SET last_seen = ?, status = 'quarantined', last_problems = ?, "
                             "firmware_version = '1.2.0' WHERE device_id = ?", (at, json.dumps(problems), device_id))


def test_device_list_fits_80_columns_keeps_whole_ids_and_utc_times(env: HubEnv, tmp_path: Path) -> None:
    ids = [LONG, "env-sensor-0002"]
    assert run(env, "device", "enroll", "--file", str(enrol_file(tmp_path, ids))).exit_code == 0
    problem = "component 'app' digest " + "ab" * 32 + " is in no manifest"  # 86 characters
    seen(env, LONG, 1_796_000_000.0, [problem])
    result = run(env, "device", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    assert any(line.startswith(LONG + " ") for line in lines) and "…" not in result.output
    assert "2026-11-30T" in result.output and "Z" in result.output  # ISO 8601 UTC, with the date
    assert "class" not in lines[0]  # left out at 80 columns before an id would be cut
    wide = run(env, "device", "list", columns=200)
    assert "class" in wide.output.splitlines()[0] and "env-sensor " in wide.output
    local = run(env, "--local-time", "device", "list", columns=200)
    assert local.exit_code == 0 and re.search(r"2026-11-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", local.output), local.output
    as_json = json.loads(run(env, "device", "list", "--json").stdout)
    assert as_json[0]["device_id"] == LONG and as_json[0]["problems"] == [problem]  # never truncated
    assert set(as_json[0]) == {"device_id", "device_class", "status", "firmware", "problems", "last_seen"}


def test_device_show_is_readable_at_80_columns(env: HubEnv, tmp_path: Path) -> None:
    run(env, "device", "enroll", "--file", str(enrol_file(tmp_path, [LONG])))
    result = run(env, "device", "show", LONG)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{LONG} (env-sensor): enrolled")
    assert "trust vector: " in result.output and "{" not in result.output  # not a Python dict
    data = json.loads(run(env, "device", "show", LONG, "--json").stdout)
    assert data["device_class"] == "env-sensor" and "class" not in data


def test_device_list_pages_with_limit_and_after(env: HubEnv, tmp_path: Path) -> None:
    ids = [f"env-sensor-{n:04d}" for n in range(1, 8)]
    run(env, "device", "enroll", "--file", str(enrol_file(tmp_path, ids)))
    first = run(env, "device", "list", "--limit", "3", "--ids")
    assert first.stdout.split() == ids[:3]
    assert "more: --after env-sensor-0003" in first.stderr
    second = json.loads(run(env, "device", "list", "--limit", "3", "--after", "env-sensor-0003", "--json").stdout)
    assert [d["device_id"] for d in second] == ids[3:6]
    last = run(env, "device", "list", "--limit", "3", "--after", "env-sensor-0006", "--ids")
    assert last.stdout.split() == ids[6:] and "more:" not in last.stderr
    assert run(env, "device", "list", "--limit", "0").exit_code == 2


@pytest.mark.parametrize(("args", "code", "message"), [
    (["device", "list", "--status", "bogus"], 2, "'bogus' is not one of 'enrolled', 'trusted'"),
    (["device", "list", "--seen-within", "5x"], 2, "'5x' is not a duration: a number with s, m, h, d or w"),
    (["device", "list", "--not-seen-for", "-3d"], 2, "is not a duration"),
    (["device", "list", "--class", "no-such-class"], 1, "unknown device class 'no-such-class' (known: "),
    (["device", "enroll", "--id", "x-1", "--class", "env-sensor", "--ca-issued", "--ueid", "zz"], 1,
     "--ueid: 'zz' is not hexadecimal"),
])
def test_bad_enumerations_durations_and_classes_are_refused(env: HubEnv, args: list[str], code: int,
                                                            message: str) -> None:
    result = run(env, *args)
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output


def test_enrolling_an_unknown_class_needs_allow_unknown_class(env: HubEnv, tmp_path: Path) -> None:
    fleet = enrol_file(tmp_path, ["gadget-0001"], device_class="no-such-class")
    refused = run(env, "device", "enroll", "--file", str(fleet), "--json")
    assert refused.exit_code == 1
    error = json.loads(refused.stdout)
    assert error["exit_code"] == 1 and error["unknown_classes"] == ["no-such-class"]
    assert "--allow-unknown-class" in error["error"]
    with env.store.reading() as conn:
        assert env.store.list_devices(conn) == []
    allowed = run(env, "device", "enroll", "--file", str(fleet), "--allow-unknown-class", "--json")
    assert allowed.exit_code == 0 and json.loads(allowed.stdout) == {"enrolled": 1}


def test_json_errors_are_objects_also_for_usage_errors(env: HubEnv) -> None:
    shown = run(env, "device", "show", "nobody", "--json")
    assert shown.exit_code == 1 and json.loads(shown.stdout) == {"error": "unknown device 'nobody'", "exit_code": 1}
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ATTEST_HUB_")}
    usage = subprocess.run([HUB, "--state-dir", str(env.settings.state_dir), "device", "list", "--status", "bogus",
                            "--json"], capture_output=True, text=True, env=environ, timeout=60)
    assert usage.returncode == 2
    error = json.loads(usage.stdout)
    assert error["exit_code"] == 2 and "'bogus' is not one of" in error["error"]


def test_the_class_field_has_one_name_in_every_command(env: HubEnv, tmp_path: Path) -> None:
    signed = str(MANIFESTS_DIR / "env-sensor" / "manifest.cose")
    outputs: list[Any] = [json.loads(run(env, "manifest", "verify", signed, "--json").stdout),
                          json.loads(run(env, "manifest", "history", "--json").stdout)[0],
                          json.loads(run(env, "policy", "history", "--json").stdout)[0]]
    for data in outputs:
        assert "device_class" in data and "class" not in data, data


def test_format_table_wraps_free_text_and_never_cuts_an_identifier() -> None:
    text = format_table([Column("id"), Column("note", wrap=True), Column("extra", drop=1)],
                        [["x" * 60, "word " * 30, "dropped first"]], 80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[1].startswith("x" * 60) and "extra" not in lines[0]
    assert " ".join(" ".join(line[62:].split()) for line in lines[1:]).split() == ["word"] * 30


# --- re-announcing ------------------------------------------------------------------------------------------

def _retained(broker: MosquittoProcess, topic: str) -> bytes | None:
    got: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}")
    client.on_message = lambda _c, _u, msg: got.append(msg.payload)
    client.connect(broker.host, broker.port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    return got[0] if got else None


@pytest.mark.broker
def test_publish_with_the_broker_down_says_how_to_reannounce_and_announce_does_it(
        broker: MosquittoProcess, tmp_path: Path) -> None:
    hub = build_env(tmp_path)
    try:
        with hub.store.transaction() as conn:  # start from sequence 1 so the repository's manifest is newer
            conn.exec_driver_sql("DELETE FROM manifest WHERE device_class = 'env-sensor'")
        signed = str(MANIFESTS_DIR / "env-sensor" / "manifest.cose")
        down = run(hub, "--broker", f"127.0.0.1:{free_port()}", "manifest", "publish", signed)
        assert down.exit_code == 3
        assert "manifest env-sensor#" in down.output and "is stored, but was not announced" in down.output
        assert "attest-hub manifest announce --class env-sensor" in down.output
        again = run(hub, "--broker", f"127.0.0.1:{free_port()}", "manifest", "publish", signed)
        assert again.exit_code == 1 and "not newer" in again.output  # stored indeed: publish is no retry path
        down_json = run(hub, "--broker", f"127.0.0.1:{free_port()}", "manifest", "announce", "--json")
        error = json.loads(down_json.stdout)
        assert down_json.exit_code == 3 and error["announced"] is False
        assert "manifests edge-gateway#" in error["error"] and "stays stored; it was not announced" in error["error"]
        assert error["broker"].startswith("127.0.0.1:") and error["broker"] in error["error"]
        assert error["retry"] == "attest-hub manifest announce --class edge-gateway --class env-sensor " \
                                 "--class psa-sensor --class smart-meter"
        up = run(hub, "--broker", f"{broker.host}:{broker.port}", "manifest", "announce", "--class", "env-sensor",
                 "--json")
        assert up.exit_code == 0, up.output
        assert json.loads(up.stdout)["announced"][0].startswith("env-sensor#")
        assert json.loads(up.stdout)["broker"] == f"{broker.host}:{broker.port}"
        assert _retained(broker, "hub/manifests/env-sensor") == Path(signed).read_bytes()
        unknown = run(hub, "--broker", f"{broker.host}:{broker.port}", "manifest", "announce", "--class", "nope")
        assert unknown.exit_code == 1 and "no manifest stored for 'nope'" in unknown.output
        policy = str(MANIFESTS_DIR / "env-sensor" / "policy.toml")
        down_policy = run(hub, "--broker", f"127.0.0.1:{free_port()}", "policy", "publish", policy)
        assert down_policy.exit_code == 3 and f"attest-hub policy publish {policy}" in down_policy.output
    finally:
        hub.close()
