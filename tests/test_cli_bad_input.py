"""Bad input to the operator CLI ends in one clear line and the documented exit code, never a traceback or a
Python message: bad paths for --out, binary files given for text, non-finite durations, enrolment files that
lack what a device needs to authenticate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from helpers import HubEnv, env_fixture

from hub.cli.main import cli
from hub.server.localhub import DEMO_OPERATOR_KEY, MANIFESTS_DIR

PYTHON_TEXT = ("Traceback", "Errno", "list indices", "could not convert", "Expecting value", "KeyError",
               "cannot convert float", "codec can't decode")


env = env_fixture()


def run(env: HubEnv, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--state-dir", str(env.settings.state_dir), *args],
                              env={"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY)}, catch_exceptions=False)


def clean(result: Result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    assert not any(text in result.output for text in PYTHON_TEXT), result.output
    for word in words:
        assert word in result.output, result.output


@pytest.mark.parametrize("age", ["inf", "1e400s", "nan", "abc", "-3d", "9" * 400])
@pytest.mark.parametrize("as_json", [False, True])
def test_prune_refuses_durations_that_are_not_finite(env: HubEnv, age: str, as_json: bool) -> None:
    result = run(env, "db", "prune", "--older-than", age, *(["--json"] if as_json else []))
    clean(result, 2, "is not a duration")


def test_device_list_refuses_an_infinite_duration(env: HubEnv) -> None:
    clean(run(env, "device", "list", "--seen-within", "9" * 400), 2, "too large")


def test_every_out_path_in_a_missing_folder_is_one_line(env: HubEnv, tmp_path: Path) -> None:
    missing = str(tmp_path / "nonexistent" / "x.out")
    source = next(MANIFESTS_DIR.glob("env-sensor/*.toml"))
    release = tmp_path / "fw"
    release.mkdir()
    (release / "app.bin").write_bytes(b"firmware")
    for args in (["audit", "export", "--quarter", "current", "--out", missing],
                 ["manifest", "sign", str(source), "--key", str(DEMO_OPERATOR_KEY).replace("pub.pem", "key.pem"),
                  "--out", missing],
                 ["manifest", "create", "--class", "env-sensor", "--sequence", "9", "--min-svn", "1",
                  "--release", f"1.0.0:1:{release}", "--out", missing]):
        result = run(env, *args)
        clean(result, 1, "x.out", "folder does not exist")
        assert len(result.output.strip().splitlines()) == 1, result.output
    as_json = run(env, "audit", "export", "--quarter", "current", "--out", missing, "--json")
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["exit_code"] == 1


def test_an_enrolment_file_that_is_not_json_is_named_in_its_one_line(env: HubEnv, tmp_path: Path) -> None:
    for name, content in (("fleet.txt", "not json at all\n"), ("fleet.json", '{"devices": [1, 2'),
                          ("deep.json", "[" * 100_000)):
        path = tmp_path / name
        path.write_text(content)
        result = run(env, "device", "enroll", "--file", str(path))
        clean(result, 1, f"enrolment file {path}: not")
        assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("out", ["/proc/nope", "{tmp}/a-file/archive"])  # folders that cannot be created
def test_prune_into_an_unwritable_folder_is_one_line_naming_it(env: HubEnv, tmp_path: Path, out: str) -> None:
    (tmp_path / "a-file").write_text("")
    out = out.format(tmp=tmp_path)
    result = run(env, "db", "prune", "--older-than", "0s", "--out", out)
    clean(result, 1, out)
    assert len(result.output.strip().splitlines()) == 1, result.output
    as_json = run(env, "db", "prune", "--older-than", "0s", "--out", out, "--json")
    assert as_json.exit_code == 1 and out in json.loads(as_json.stdout)["error"]
    configured = CliRunner().invoke(cli, ["--state-dir", str(env.settings.state_dir), "db", "prune", "--older-than",
                                          "0s"], env={"ATTEST_HUB_RETENTION_DIR": out}, catch_exceptions=False)
    clean(configured, 3, out)  # the hub's own archive folder: a fault of its host, like its key files


def test_binary_files_given_for_text_are_refused_plainly(env: HubEnv, tmp_path: Path) -> None:
    binary = tmp_path / "m.cose"
    binary.write_bytes(b"\xd2\x84\xff\xfe" * 8)
    clean(run(env, "manifest", "sign", str(binary), "--key", str(DEMO_OPERATOR_KEY), "--out",
              str(tmp_path / "x.cose")), 1, "not UTF-8")
    clean(run(env, "audit", "verify", "--file", str(binary)), 1, "not UTF-8")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("garbage\n")
    clean(run(env, "audit", "verify", "--file", str(garbage)), 1, "line 1", "not JSON")


@pytest.mark.parametrize(("name", "content", "words"), [
    ("list.json", "[]", ['{"devices"']),
    ("noclass.json", json.dumps({"devices": [{"device_id": "a-1", "public_key_pem": "x"}]}), ["missing device_class"]),
    ("nokey.json", json.dumps({"devices": [{"device_id": "a-1", "device_class": "env-sensor"}]}),
     ["missing public_key_pem"]),
    ("bad.json", "{", ["not JSON"]),
    ("b.csv", "device_id,device_class\nfoo,env-sensor\n", ["line 2", "no public key for 'foo'", "public_key_file"]),
])
def test_enrolment_files_need_a_key_for_every_device(env: HubEnv, tmp_path: Path, name: str, content: str,
                                                      words: list[str]) -> None:
    path = tmp_path / name
    path.write_text(content)
    clean(run(env, "device", "enroll", "--file", str(path)), 1, *words)
    with env.store.reading() as conn:
        assert env.store.list_devices(conn) == []


def test_ca_issued_needs_manufacturer_cas(env: HubEnv) -> None:
    clean(run(env, "device", "enroll", "--id", "ca-1", "--class", "env-sensor", "--ca-issued"), 1,
          "no manufacturer_cas are configured")
    with env.store.reading() as conn:
        assert env.store.list_devices(conn) == []


def test_a_bad_device_id_is_called_a_device_id(env: HubEnv, tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text("x")
    clean(run(env, "device", "enroll", "--id", "a/b", "--class", "env-sensor", "--ca-issued"), 1)
    result = run(env, "device", "enroll", "--id", "a/b", "--class", "env-sensor", "--key", str(key))
    clean(result, 1, "device id 'a/b' contains a slash")


def test_audit_verify_of_an_empty_export_says_no_entries(env: HubEnv, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    clean(run(env, "audit", "verify", "--file", str(empty)), 1, "no entries")


def test_audit_export_refuses_a_period_that_ends_before_it_starts_and_has_json(env: HubEnv, tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    clean(run(env, "audit", "export", "--since", "2027-01-01", "--until", "2026-01-01", "--out", str(out)), 2,
          "is not before")
    assert not out.exists()
    result = run(env, "audit", "export", "--quarter", "current", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["out"] == str(out) and summary["entries"] == len(out.read_text().splitlines())


def test_json_times_are_iso_8601_utc(env: HubEnv) -> None:
    import re

    env.add_device("env-sensor-0001", "env-sensor")
    with env.store.transaction() as conn:
        conn.exec_driver_sql("UPDATE device SET last_seen = 1796061623.73 WHERE device_id = 'env-sensor-0001'")
    env.add_device("env-sensor-0002", "env-sensor")
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    listed = {d["device_id"]: d["last_seen"] for d in json.loads(run(env, "device", "list", "--json").stdout)}
    assert listed == {"env-sensor-0001": "2026-11-30T18:00:23Z", "env-sensor-0002": None}
    assert all(iso.match(e["at"]) for e in json.loads(run(env, "audit", "show", "--json").stdout))
    report = json.loads(run(env, "report", "--json").stdout)
    assert iso.match(report["generated_at"]) and report["never_seen"] == ["env-sensor-0002"]
    human = run(env, "report", "--silent-after", "1m").stdout
    assert "Never seen (enrolled, no evidence yet): env-sensor-0002" in human
    assert "Not seen for 60s: env-sensor-0001" in human


def test_unknown_devices_are_called_unknown_everywhere(env: HubEnv) -> None:
    for args in (["device", "show", "nosuch"], ["result", "show", "nosuch"], ["audit", "show", "--device", "nosuch"],
                 ["result", "verify", "--device", "nosuch"]):
        clean(run(env, *args), 1, "unknown device 'nosuch'")


@pytest.mark.parametrize("command", ["quarantine", "release", "revoke"])
def test_an_empty_reason_is_refused(env: HubEnv, command: str) -> None:
    env.add_device("env-sensor-0004", "env-sensor")
    clean(run(env, "device", command, "env-sensor-0004", "--reason", " "), 2, "give the reason")
    with env.store.reading() as conn:
        assert env.store.devices(conn, ["env-sensor-0004"])["env-sensor-0004"].status == "enrolled"


def test_output_into_a_closed_pipe_exits_0(env: HubEnv, tmp_path: Path) -> None:
    import subprocess
    import sys

    env.add_device("env-sensor-0001", "env-sensor")
    hub = str(Path(sys.executable).parent / "attest-hub")
    for command in ("report", "device list"):
        shell = f"'{hub}' --state-dir '{env.settings.state_dir}' {command} | head -c 1 >/dev/null; " \
                "echo ${PIPESTATUS[0]}"
        done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60, check=False,
                              env={"PATH": "/usr/bin:/bin", "COLUMNS": "80"})
        assert done.stdout.strip() == "0", (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr


def test_importing_a_manifest_source_says_sign_it_first(env: HubEnv) -> None:
    source = MANIFESTS_DIR / "env-sensor" / "manifest.toml"
    clean(run(env, "manifest", "import", str(source)), 1, "is a manifest source (TOML), not a signed manifest",
          "attest-hub manifest sign")
    signed = MANIFESTS_DIR / "env-sensor" / "manifest.cose"
    assert "manifest source" not in run(env, "manifest", "import", str(signed)).output


def test_a_missing_operator_key_file_is_named_without_errno(env: HubEnv, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--state-dir", str(env.settings.state_dir), "manifest", "import",
                                      str(MANIFESTS_DIR / "env-sensor" / "manifest.cose")],
                                env={"ATTEST_HUB_OPERATOR_KEYS": str(tmp_path / "nope.pem")}, catch_exceptions=False)
    clean(result, 3, f"key file {tmp_path / 'nope.pem'}: no such file or directory")
