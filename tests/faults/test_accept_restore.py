"""One hub per state directory, and ``db accept-restore`` only when there is a restore to accept.

``serve`` holds an exclusive lock on ``state_dir/hub.lock`` for its lifetime: a second ``serve`` on the same
state dir is refused (exit 3, the holder's pid named), and so is ``accept-restore`` while a hub serves (exit 1);
the kernel frees the lock when the holder dies, SIGKILL included. ``accept-restore`` on a database that is
behind nothing refuses (exit 1, "nothing to accept"), and on an empty database names the path that works:
``db upgrade`` first.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from hub.broker.process import MosquittoProcess
from hub.cli.main import cli
from tests.e2e import make_env
from tests.faults.rig import FAST_HUB, HubProcess, wait_until


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def _holds_lock(hub: HubProcess, state: Path) -> bool:
    assert hub.proc is not None and hub.proc.poll() is None, hub.log_tail()
    lock = state / "hub.lock"
    return lock.exists() and lock.read_text().split()[:1] == [str(hub.proc.pid)]


def _run(hub: HubProcess, *args: str) -> subprocess.CompletedProcess[str]:
    base = hub.command[:hub.command.index("serve")]
    return subprocess.run([*base, *args], env=hub.environ, capture_output=True, text=True, timeout=60)


@pytest.mark.broker
@pytest.mark.slow
def test_a_second_serve_and_accept_restore_are_refused_while_a_hub_serves_and_sigkill_frees_the_lock(
        broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 1, "honest:1", **FAST_HUB)
    state = env.settings.state_dir
    first = HubProcess(env).start()
    assert first.proc is not None
    try:
        wait_until(lambda: _holds_lock(first, state), 20, "the first serve to take the state dir's lock")
        second = _run(first, "serve")
        lines = _error_lines(second.stderr)
        assert second.returncode == 3 and len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"pid {first.proc.pid}" in lines[0] and "serve" in lines[0], lines[0]
        accept = _run(first, "db", "accept-restore")
        lines = _error_lines(accept.stderr)
        assert accept.returncode == 1 and len(lines) == 1, accept.stderr
        assert f"pid {first.proc.pid}" in lines[0], lines[0]
        assert first.proc.poll() is None, "the refused commands left the serving hub alone"
    finally:
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
    third = HubProcess(env).start()
    assert third.proc is not None
    try:
        wait_until(lambda: _holds_lock(third, state), 20, "a new serve after the first was killed")
        wait_until(lambda: "serving with" in third.log_tail(), 20, "the new serve to start its workers")
    finally:
        third.stop()
    # stopped: the lock is free, and a database that is not behind has nothing to accept
    nothing = _run(third, "db", "accept-restore")
    lines = _error_lines(nothing.stderr)
    assert nothing.returncode == 1 and len(lines) == 1, nothing.stderr
    assert lines[0].startswith("error: nothing to accept: the database is not behind"), lines[0]


def _invoke(state: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--state-dir", str(state), "--broker", "127.0.0.1:1", *args])


def test_accept_restore_refuses_when_nothing_is_behind_and_changes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "hub"
    assert _invoke(state, "init").exit_code == 0
    secret = (state / "nonce-secret.bin").read_bytes()
    refused = _invoke(state, "db", "accept-restore")
    assert refused.exit_code == 1, refused.output
    assert "error: nothing to accept: the database is not behind" in refused.output
    assert (state / "nonce-secret.bin").read_bytes() == secret, "nothing rotated"
    assert _invoke(state, "audit", "verify").exit_code == 0


def test_accept_restore_on_an_empty_database_names_db_upgrade_which_then_works(tmp_path: Path) -> None:
    state = tmp_path / "hub"
    assert _invoke(state, "init").exit_code == 0
    (state / "hub.db").write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        Path(f"{state / 'hub.db'}{suffix}").unlink(missing_ok=True)
    refused = _invoke(state, "db", "accept-restore")
    assert refused.exit_code == 3, refused.output
    lines = _error_lines(refused.output)
    assert len(lines) == 1 and "`attest-hub db upgrade` first" in lines[0], refused.output
    assert _invoke(state, "db", "upgrade").exit_code == 0
    accepted = _invoke(state, "db", "accept-restore")
    assert accepted.exit_code == 0, accepted.output
    assert _invoke(state, "device", "list").exit_code == 0
