"""``serve``: one readable line per verdict on a terminal, the same verbosity in every worker, JSON lines elsewhere;
infrastructure faults at start-up end in one line and exit 3; restarts back off and a crash loop stops the hub."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from device_sim.fleet import Fleet
from hub.broker.process import MosquittoProcess, free_port
from hub.server.localhub import DEMO_OPERATOR_KEY
from hub.server.supervisor import CrashLoopError, RestartPolicy, run_workers
from tests.crashing_worker import crash
from tests.e2e import make_env

HUB = [str(Path(sys.executable).parent / "attest-hub")]


def _env(settings_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTEST_HUB_")}
    env.update(settings_env)
    return env


# --- start-up faults ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--broker", "127.0.0.1:{port}"], "error: broker unreachable at 127.0.0.1:{port}: Connection refused"),
    (["--database-url", "postgresql://hub:secret@127.0.0.1:{port}/hub"], "error: cannot open database 127.0.0.1:"),
    (["--database-url", "mysql://hub:secret@127.0.0.1/hub"], "error: cannot open database 127.0.0.1/hub: no driver"),
    (["--state-dir", "{tmp}"], "error: state dir {tmp} holds no hub (no hub-signing.key.pem, no generation.json): "
                               "run `attest-hub --state-dir {tmp} init`"),
    (["--state-dir", "{tmp}/no-hub"], "error: state dir {tmp}/no-hub does not exist: run `attest-hub --state-dir "
                                      "{tmp}/no-hub init`"),
])
def test_an_infrastructure_fault_at_start_up_is_one_line_and_exit_3(tmp_path: Path, args: list[str],
                                                                    message: str) -> None:
    subprocess.run([*HUB, "--state-dir", str(tmp_path / "s"), "init"], check=True, capture_output=True,
                   env=_env({}))
    port = str(free_port())
    args = [a.format(port=port, tmp=tmp_path) for a in args]
    result = subprocess.run([*HUB, "--state-dir", str(tmp_path / "s"), "--broker", f"127.0.0.1:{port}", *args,
                             "serve", "--workers", "2"], capture_output=True, text=True, timeout=60,
                            env=_env({"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY)}))
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message.format(port=port, tmp=tmp_path)), lines[0]
    assert "secret" not in result.stderr and "Traceback" not in result.stderr


def _serve_once(state: Path, environ: dict[str, str]) -> tuple[int, str]:
    """``serve`` with an unreachable broker: its exit code and its one line (no traceback)."""
    result = subprocess.run([*HUB, "--broker", f"127.0.0.1:{free_port()}", "serve"], capture_output=True,
                            text=True, timeout=60, env=_env({"ATTEST_HUB_STATE_DIR": str(state), **environ}))
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return result.returncode, lines[0]


def test_start_up_reports_the_most_basic_problem_first(tmp_path: Path) -> None:
    """Everything wrong at once, then put right one at a time: the state dir, the database, the hub's keys, the
    operator keys, the archive folder, the broker; each time the first problem left is the one reported."""
    state = tmp_path / "s"
    broken = {"ATTEST_HUB_RETENTION_DAYS": "30", "ATTEST_HUB_RETENTION_DIR": "/proc/nope"}
    (tmp_path / "a-file").write_text("")
    assert _serve_once(tmp_path / "a-file", broken) == (
        3, f"error: state dir {tmp_path / 'a-file'} is not a directory: run `attest-hub --state-dir "
           f"{tmp_path / 'a-file'} init` to create a hub there, or give the state dir of an existing hub (--state-dir "
           "or ATTEST_HUB_STATE_DIR)")
    code, line = _serve_once(state, broken)
    assert (code, line.split(":")[:2]) == (3, ["error", f" state dir {state} does not exist"]), line
    state.mkdir()
    code, line = _serve_once(state, broken)
    assert code == 3 and line.startswith(f"error: state dir {state} holds no hub"), line
    subprocess.run([*HUB, "--state-dir", str(state), "init"], check=True, capture_output=True, env=_env({}))
    good = (state / "hub.db").read_bytes()
    key = state / "hub-signing.key.pem"
    pem = key.read_bytes()
    (state / "hub.db").write_bytes(b"not a database " * 512)
    key.unlink()
    code, line = _serve_once(state, broken)
    assert (code, line) == (3, f"error: cannot open database sqlite:///{state}/hub.db: file is not a database"), line
    (state / "hub.db").write_bytes(good)
    code, line = _serve_once(state, broken)
    assert (code, line) == (3, f"error: cannot read {key}: No such file or directory (run 'attest-hub init' to "
                               "create the hub's keys)"), line
    key.write_bytes(pem)
    key.chmod(0o600)
    code, line = _serve_once(state, broken)
    assert code == 1 and line.startswith("error: configuration: operator_keys is empty"), line
    broken["ATTEST_HUB_OPERATOR_KEYS"] = str(DEMO_OPERATOR_KEY)
    code, line = _serve_once(state, broken)
    assert code == 1 and line.startswith("error: configuration: retention_dir: cannot create the archive folder "
                                         "/proc/nope: no such file or directory;"), line
    del broken["ATTEST_HUB_RETENTION_DIR"]  # state_dir/archive
    code, line = _serve_once(state, broken)
    assert code == 3 and line.startswith("error: broker unreachable at 127.0.0.1:"), line
    assert (state / "archive").is_dir()


@pytest.mark.parametrize(("settings", "message"), [
    ({"ATTEST_HUB_RETENTION_DIR": "/proc/nope"}, "cannot create the archive folder /proc/nope: no such file or "
                                                 "directory"),
    ({"ATTEST_HUB_RETENTION_DIR": "{tmp}/a-file/archive", "ATTEST_HUB_RETENTION_DAYS": "90"},
     "cannot create the archive folder {tmp}/a-file/archive: not a directory"),
    ({"ATTEST_HUB_RETENTION_DAYS": "90", "ATTEST_HUB_STATE_DIR": "{tmp}/archive-is-a-file"},
     "cannot create the archive folder {tmp}/archive-is-a-file/archive: file exists"),
])
def test_serve_refuses_an_archive_folder_it_cannot_create(tmp_path: Path, settings: dict[str, str],
                                                           message: str) -> None:
    (tmp_path / "a-file").write_text("")
    state = Path(settings.get("ATTEST_HUB_STATE_DIR", str(tmp_path / "s")).format(tmp=tmp_path))
    subprocess.run([*HUB, "--state-dir", str(state), "init"], check=True, capture_output=True, env=_env({}))
    (state / "archive").write_text("")  # only the default folder of the third case is in the way
    settings = {k: v.format(tmp=tmp_path) for k, v in settings.items()}
    code, line = _serve_once(state, {"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY), **settings})
    assert code == 1, line
    assert line == (f"error: configuration: retention_dir: {message.format(tmp=tmp_path)}; the hub exports there what "
                    "it prunes (retention_days, `attest-hub db prune`): set retention_dir (ATTEST_HUB_RETENTION_DIR) "
                    "to a folder this user can create and write"), line


def test_without_retention_the_archive_folder_is_not_needed(tmp_path: Path) -> None:
    state = tmp_path / "s"
    subprocess.run([*HUB, "--state-dir", str(state), "init"], check=True, capture_output=True, env=_env({}))
    (state / "archive").write_text("")  # never used: retention_days = 0 and no retention_dir
    code, line = _serve_once(state, {"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY)})
    assert code == 3 and line.startswith("error: broker unreachable at 127.0.0.1:"), line


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://hub@db.example:5432/hub", "postgresql://hub@db.example:5432/hub"),  # no password: nothing masked
    ("postgresql://hub:@db.example/hub", "postgresql://hub:@db.example/hub"),  # an empty one
    ("postgresql://hub:s3cret@db.example/hub", "postgresql://hub:***@db.example/hub"),
    ("postgresql://db.example/hub?user=hub&password=s3cret&sslmode=require",
     "postgresql://db.example/hub?user=hub&password=***&sslmode=require"),
    ("postgresql://hub:s3cret@db.example/hub?application_name=a@b",
     "postgresql://hub:***@db.example/hub?application_name=a@b"),
])
def test_the_start_up_line_masks_only_an_actual_password(url: str, shown: str) -> None:
    from hub.config import load_settings
    from hub.server.serve import listening

    line = listening(load_settings(None, environ={}, database_url=url), 1)
    assert f"database {shown};" in line and "s3cret" not in line, line


# --- operator keys: fail closed ------------------------------------------------------------------------------

def test_serve_without_operator_keys_refuses_to_start_in_one_line(tmp_path: Path) -> None:
    subprocess.run([*HUB, "--state-dir", str(tmp_path / "s"), "init"], check=True, capture_output=True,
                   env=_env({}))
    result = subprocess.run([*HUB, "--state-dir", str(tmp_path / "s"), "--broker", f"127.0.0.1:{free_port()}",
                             "serve"], capture_output=True, text=True, timeout=30, env=_env({}))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: configuration: operator_keys is empty"), lines[0]
    assert "ATTEST_HUB_OPERATOR_KEYS" in lines[0] and "allow_no_operator_keys" in lines[0]


@pytest.mark.broker
def test_serve_without_operator_keys_when_allowed_warns_and_healthz_says_so(broker: MosquittoProcess,
                                                                            tmp_path: Path) -> None:
    import urllib.request

    subprocess.run([*HUB, "--state-dir", str(tmp_path / "s"), "init"], check=True, capture_output=True,
                   env=_env({}))
    metrics = free_port()
    env = _env({"ATTEST_HUB_ALLOW_NO_OPERATOR_KEYS": "true", "ATTEST_HUB_METRICS_PORT": str(metrics)})
    proc, fd = _serve(env, ["--state-dir", str(tmp_path / "s"), "--broker", f"{broker.host}:{broker.port}",
                            "serve"], terminal=False)
    try:
        output = _read_until(proc, fd, re.compile("WITHOUT OPERATOR KEYS"), 30)
        health = None
        deadline = time.monotonic() + 20
        while health is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/healthz", timeout=5) as response:
                    health = json.loads(response.read())
            except OSError:
                time.sleep(0.2)
    finally:
        _stop(proc, fd)
    warning = next(json.loads(line) for line in output.splitlines() if "WITHOUT OPERATOR KEYS" in line)
    assert warning["level"] == "warning", warning
    assert health is not None and health["no_operator_keys"] is True, health


# --- restarts ------------------------------------------------------------------------------------------------

def test_restart_delays_double_up_to_a_cap_and_a_stable_run_resets_them() -> None:
    policy = RestartPolicy(base_s=0.5, cap_s=4.0, stable_s=60.0, crash_loop=6)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [policy.record_exit(0, 1.0) for _ in range(3)] == [1, 2, 3]
    assert policy.record_exit(1, 1.0) == 1  # per worker
    assert policy.record_exit(0, 61.0) == 1  # ran long enough: a fresh failure, not a loop
    assert not policy.is_crash_loop(5) and policy.is_crash_loop(6)


def test_a_crash_loop_backs_off_then_stops_every_worker_with_one_message(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    from hub.config import load_settings

    settings = load_settings(None, environ={}, state_dir=tmp_path)
    policy = RestartPolicy(base_s=0.1, cap_s=0.4, stable_s=30.0, crash_loop=5)
    stop = threading.Event()
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="hub.server.supervisor"), \
            pytest.raises(CrashLoopError, match=r"worker \d exited 5 times in a row, each within 30s of starting"):
        run_workers(settings, 2, stop, 0, policy=policy, target=crash)
    assert time.monotonic() - started < 60
    for index in (0, 1):
        starts = [float(t) for t in (tmp_path / f"starts-{index}").read_text().split()]
        assert 4 <= len(starts) <= 5  # the first start and its restarts; the fifth death ended it all
        assert all(b - a >= 0.1 for a, b in itertools.pairwise(starts))  # never restarted at once
        delays = [float(m.group(1)) for r in caplog.records
                  if (m := re.search(rf"^worker {index} exited .* in (\d+\.\d)s$", r.getMessage()))]
        assert delays[:4] == [0.1, 0.2, 0.4, 0.4][:len(delays)] and len(delays) >= 3  # doubling, capped
    assert sum("restarting it under the same identity" in r.getMessage() for r in caplog.records) <= 8


# --- verdict lines ----------------------------------------------------------------------------------------

def _serve(env: dict[str, str], args: list[str], *, terminal: bool) -> tuple[subprocess.Popen[bytes], int]:
    """``attest-hub ... serve`` with stderr on a pseudo-terminal (returns its master fd) or a pipe (fd -1)."""
    if terminal:
        master, slave = pty.openpty()
        proc = subprocess.Popen(HUB + args, env=env, stdout=subprocess.DEVNULL, stderr=slave,
                                start_new_session=True)
        os.close(slave)
        return proc, master
    proc = subprocess.Popen(HUB + args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    return proc, -1


def _read_until(proc: subprocess.Popen[bytes], fd: int, done: re.Pattern[str], timeout: float) -> str:
    out = b""
    deadline = time.monotonic() + timeout
    stream = fd if fd >= 0 else proc.stderr.fileno()  # type: ignore[union-attr]
    while time.monotonic() < deadline and not done.search(out.decode(errors="replace")):
        ready, _, _ = select.select([stream], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(stream, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace")


def _stop(proc: subprocess.Popen[bytes], fd: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if fd >= 0:
        os.close(fd)
    if proc.stderr is not None:
        proc.stderr.close()


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.parametrize(("workers", "quiet"), [(1, False), (2, False), (2, True)])
def test_one_readable_line_per_verdict_on_a_terminal_the_same_in_every_worker(
        broker: MosquittoProcess, tmp_path: Path, workers: int, quiet: bool) -> None:
    hub = make_env(broker, tmp_path, 2, "honest:1,tampered:1", epoch_period_s=3600.0)
    metrics = free_port()
    env = _env({"ATTEST_HUB_STATE_DIR": str(hub.settings.state_dir), "ATTEST_HUB_BROKER_HOST": broker.host,
                "ATTEST_HUB_BROKER_PORT": str(broker.port), "ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY),
                "ATTEST_HUB_DATABASE_URL": hub.settings.effective_database_url,
                "ATTEST_HUB_METRICS_PORT": str(metrics), "COLUMNS": "200"})
    args = [*(["-q"] if quiet else []), "serve", "--workers", str(workers)]
    proc, fd = _serve(env, args, terminal=True)
    try:
        time.sleep(0.5)
        with Fleet(broker.host, broker.port, hub.devices, hub.hub_key_pem) as fleet:
            assert fleet.wait_for_epoch(20) is not None
            time.sleep(1.5)  # every worker subscribed
            fleet.publish_round()
            assert fleet.flush(10)
            pattern = re.compile(r"(?m)^.*env-sensor-\d{4} firmware: \w+, quarantine.*$") if not quiet else \
                re.compile(r"\Z.")  # quiet: read until the timeout
            output = _read_until(proc, fd, pattern, 5 if quiet else 30)
    finally:
        _stop(proc, fd)
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    verdicts = [line for line in lines if " firmware: " in line]
    assert not any(line.startswith("{") for line in lines), "JSON on a terminal"
    if quiet:
        assert verdicts == [] and not any("serving with" in line for line in lines), output
        return
    (tampered,) = [d for d in hub.devices if d.profile.value == "tampered"]
    started = next(line for line in lines if "serving with" in line)
    assert f"{workers} worker(s)" in started and f"http://127.0.0.1:{metrics}" in started
    bad = next(line for line in verdicts if tampered.device_id in line)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO +" + re.escape(tampered.device_id)
                    + r" firmware: \w+, quarantine \(.+\)$", bad), bad
    assert sum(tampered.device_id in line for line in verdicts) == 1  # one line per verdict


@pytest.mark.broker
@pytest.mark.slow
def test_json_lines_off_a_terminal_with_several_workers(broker: MosquittoProcess, tmp_path: Path) -> None:
    hub = make_env(broker, tmp_path, 2, "honest:2", epoch_period_s=3600.0)
    env = _env({"ATTEST_HUB_STATE_DIR": str(hub.settings.state_dir), "ATTEST_HUB_BROKER_HOST": broker.host,
                "ATTEST_HUB_BROKER_PORT": str(broker.port), "ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY),
                "ATTEST_HUB_DATABASE_URL": hub.settings.effective_database_url})
    proc, fd = _serve(env, ["serve", "--workers", "2"], terminal=False)
    try:
        time.sleep(0.5)
        with Fleet(broker.host, broker.port, hub.devices, hub.hub_key_pem) as fleet:
            assert fleet.wait_for_epoch(20) is not None
            time.sleep(1.5)
            fleet.publish_round()
            assert fleet.flush(10)
            ids = [d.device_id for d in hub.devices]
            output = _read_until(proc, fd, re.compile(".*".join(map(re.escape, ids)) + "|" + ".*".join(
                map(re.escape, reversed(ids))), re.S), 30)
    finally:
        _stop(proc, fd)
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    verdicts = [r for r in records if "verdict" in r and r.get("scheme") == "firmware"]
    assert {r["device_id"] for r in verdicts} == {d.device_id for d in hub.devices}
    assert all(r["ts"].endswith("Z") and r["verdict"] == "affirming" and "action" in r for r in verdicts)
    assert replace(hub.settings).workers == 1  # the workers came from --workers, not the settings
