"""A restored ``hub.db`` with the crashed hub's ``hub.db-wal`` left beside it: refused, never applied.

SQLite replays a WAL on whatever database file lies beside it (it checks the frames against the WAL's own
header only), and the first connection to close checkpoints the mix into the file. An operator who copies a
backup over ``hub.db`` after a crash but leaves ``hub.db-wal`` and ``hub.db-shm`` gets an older file under
newer pages: a corrupt or silently inconsistent database. Every command, ``serve`` and ``db accept-restore``
included, refuses that pair in one line (exit 3) and leaves the database, the WAL and ``-shm`` as they were
(contents and modification times); a WAL that belongs to its file (an honest crash) is checked, checkpointed,
and nothing in it is lost.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from device_sim.fleet import Fleet
from hub.broker.process import MosquittoProcess
from hub.cli.main import cli
from hub.config import Settings, load_settings
from hub.crypto.hubstate import StateLock, StateLocked, open_store, read_marks, stamp_database, step_generation
from hub.store.wal import sqlite_files
from tests.e2e import make_env
from tests.faults.rig import FAST_HUB, HubProcess, wait_until

STALE = "a restored database with a stale write-ahead log"


def _invoke(state: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--state-dir", str(state), "--broker", "127.0.0.1:1", *args])


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _files(db: Path) -> dict[str, tuple[str, int] | None]:
    """Each of the three files' digest and modification time (ns), None if absent; and the folder's names."""
    found: dict[str, tuple[str, int] | None] = {}
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db}{suffix}")
        found[suffix] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns) \
            if path.exists() else None
    found["folder: " + " ".join(sorted(p.name for p in db.parent.iterdir()))] = None
    return found


def _read_only(db: Path, sql: str) -> list[tuple[object, ...]]:
    """Rows read with the WAL applied but never checkpointed or deleted (a read-only connection)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def _crash_writing(db: Path, rows: int, *, size: int = 64, checkpoint_after: int | None = None) -> None:
    """A writer that commits ``rows`` filler rows into ``hub_state`` and dies without closing (its WAL stays);
    ``checkpoint_after``: a checkpoint (as SQLite's automatic one) after that many rows."""
    code = textwrap.dedent(f"""
        import os, sqlite3
        conn = sqlite3.connect({str(db)!r}, isolation_level=None)
        conn.execute("PRAGMA wal_autocheckpoint=0")
        for i in range({rows}):
            conn.execute("INSERT OR REPLACE INTO hub_state (key, value) VALUES (?, ?)", (f"filler:{{i}}", "x" * {size}))
            if i + 1 == {checkpoint_after!r}:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert Path(f"{db}-wal").stat().st_size > 32, "the crashed writer left its WAL"


def _settings(state: Path) -> Settings:
    return load_settings(None, environ={}, state_dir=state, broker_host="127.0.0.1", broker_port=1)


def _served_hub(tmp_path: Path) -> tuple[Path, Settings, Path]:
    """A hub made by ``init`` in ``tmp_path/hub`` and started once (``_served``): its state dir, settings and
    SQLite database."""
    state = tmp_path / "hub"
    assert _invoke(state, "init").exit_code == 0
    settings = _settings(state)
    _served(settings)
    return state, settings, state / "hub.db"


def _served(settings: Settings) -> None:
    """What ``serve`` does to the database at a start: stamp it, step the generation (the leader)."""
    stamp_database(settings)
    store = open_store(settings)
    try:
        step_generation(settings, store)
    finally:
        store.close()


def _assert_refused(state: Path, *command: str) -> str:
    done = _invoke(state, *command)
    lines = [line for line in done.output.splitlines() if line.startswith("error: ")]
    assert done.exit_code == 3 and len(lines) == 1, (command, done.output)
    assert done.exception is None or isinstance(done.exception, SystemExit), (command, done.exception)
    assert STALE in lines[0] and "hub.db-wal" in lines[0] and "accept-restore" in lines[0], lines[0]
    return lines[0]


def _restore_leaving_the_wal(backup: Path, db: Path) -> None:
    shutil.copy(backup, db)  # the operator's mistake: hub.db-wal and hub.db-shm stay where they were


def test_a_backup_from_an_earlier_run_restored_beside_the_crashed_hubs_wal_is_refused_by_every_command(
        tmp_path: Path) -> None:
    state, settings, db = _served_hub(tmp_path)
    backup = tmp_path / "backup.db"
    shutil.copy(db, backup)  # last night's backup
    _served(settings)  # a later run of the hub
    _crash_writing(db, 50)
    _restore_leaving_the_wal(backup, db)
    before = _files(db)

    for command in (["device", "list"], ["report"], ["audit", "verify"], ["db", "current"], ["db", "upgrade"],
                    ["db", "accept-restore"], ["init"]):
        line = _assert_refused(state, *command)
        assert "mark" in line, line  # the file is not the one the hub last stamped
        assert _files(db) == before, f"{command}: the refusal changed hub.db, its WAL or -shm"

    for suffix in ("-wal", "-shm"):  # the documented way out
        Path(f"{db}{suffix}").rename(tmp_path / f"aside{suffix}")
    accepted = _invoke(state, "db", "accept-restore")
    assert accepted.exit_code == 0, accepted.output
    assert _invoke(state, "device", "list").exit_code == 0
    assert _invoke(state, "audit", "verify").exit_code == 0


def _audit_rows(db: Path, first: int, count: int, checkpoint_after: int | None) -> None:
    """Audit rows of a chain ``w9`` (seq ``first + 1`` on) committed by a writer that then dies, WAL left
    (``checkpoint_after``: a checkpoint after that many rows, as SQLite's automatic one), or closes cleanly."""
    end = "os._exit(0)" if checkpoint_after is not None else "conn.close()"
    code = textwrap.dedent(f"""
        import os, sqlite3
        conn = sqlite3.connect({str(db)!r}, isolation_level=None)
        conn.execute("PRAGMA wal_autocheckpoint=0")
        for i in range({first}, {first + count}):
            conn.execute("INSERT INTO audit (at, actor, action, device_id, detail, prev_hash, entry_hash, chain, "
                         "seq) VALUES (?, 'hub', 'verdict', 'dev', ?, ?, ?, 'w9', ?)",
                         (i, "x" * 150, "a" * 64, "b" * 64, i + 1))
            if i + 1 - {first} == {checkpoint_after!r}:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        {end}
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(("before", "after", "checkpoint_after", "found"), [
    (0, 400, 300, "integrity_check"),  # the file grew between the backup and the checkpoint: a malformed image
    (2000, 30, 10, "wrong # of entries in index"),  # no page added: an index from the log, rows from the backup
])
def test_a_backup_from_this_run_older_than_a_checkpoint_is_refused_by_integrity_check(
        tmp_path: Path, before: int, after: int, checkpoint_after: int, found: str) -> None:
    """The backup carries the current mark (taken during the same run), so only the content can tell. In the
    second case every b-tree is well formed (``quick_check`` passes); only the index against its table shows it."""
    state, _, db = _served_hub(tmp_path)
    if before:
        _audit_rows(db, 0, before, None)
    backup = tmp_path / "backup.db"
    shutil.copy(db, backup)
    _audit_rows(db, before, after, checkpoint_after)
    assert Path(f"{db}-wal").stat().st_size > 32
    _restore_leaving_the_wal(backup, db)
    before_files = _files(db)
    for command in (["device", "list"], ["db", "accept-restore"]):
        line = _assert_refused(state, *command)
        assert found in line, line
        sqlite_said = re.findall(r"Page \d+:|wrong # of entries|missing from index|never used", line)
        assert len(sqlite_said) == 1, f"SQLite's detail once, not {sqlite_said}: {line}"
        assert _files(db) == before_files


def test_a_wal_whose_database_file_was_removed_is_refused_not_turned_into_a_database(tmp_path: Path) -> None:
    state, _, db = _served_hub(tmp_path)
    _crash_writing(db, 50)
    wal = _digest(Path(f"{db}-wal"))
    for emptied in (False, True):
        db.unlink(missing_ok=True)
        if emptied:
            db.write_bytes(b"")
        for command in (["device", "list"], ["db", "upgrade"], ["init"]):
            line = _assert_refused(state, *command)
            assert "missing or empty" in line, line
        assert _digest(Path(f"{db}-wal")) == wal
        assert db.exists() == emptied and (not emptied or db.stat().st_size == 0)


def test_without_a_shm_file_the_check_creates_none_and_still_tells_its_own_wal_from_a_stale_one(
        tmp_path: Path) -> None:
    """SQLite creates ``-shm`` to read a WAL: the check reads the two through links in a folder of its own."""
    state, _, db = _served_hub(tmp_path)
    backup = tmp_path / "backup.db"
    shutil.copy(db, backup)  # during this run: the mark agrees
    _audit_rows(db, 0, 400, 300)  # a checkpoint past the backup: only integrity_check tells
    Path(f"{db}-shm").unlink()
    stale = tmp_path / "stale"
    shutil.copytree(state, stale)
    _restore_leaving_the_wal(backup, stale / "hub.db")
    before = _files(stale / "hub.db")
    assert before["-shm"] is None
    line = _assert_refused(stale, "device", "list")
    assert "integrity_check" in line, line
    assert _files(stale / "hub.db") == before, "no -shm and no folder was left behind"

    listed = _invoke(state, "device", "list")
    assert listed.exit_code == 0, listed.output
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0, "the WAL was checkpointed"
    assert _read_only(db, "SELECT count(*) FROM audit WHERE chain = 'w9'") == [(400,)]  # all of the WAL's rows
    assert not [p.name for p in state.iterdir() if p.name.startswith(".wal-check")]


def _recoveries(state: Path) -> list[dict[str, object]]:
    shown = _invoke(state, "audit", "show", "--action", "wal-recovered", "--json")
    assert shown.exit_code == 0, shown.output
    return [entry["detail"] for entry in json.loads(shown.stdout)]


@pytest.mark.parametrize("command", [["device", "list"], ["db", "current"], ["init"]])
def test_an_honest_crash_leaves_a_wal_that_is_checked_adopted_and_loses_nothing(
        tmp_path: Path, command: list[str]) -> None:
    """Every way in (a command's store, ``db``'s own opening, ``init``) adopts the WAL, says so once as a warning
    and records it once in the audit log, so an operator sees that a crash recovery happened."""
    state, _, db = _served_hub(tmp_path)
    _crash_writing(db, 400, size=2000, checkpoint_after=300)
    written = _read_only(db, "SELECT count(*) FROM hub_state WHERE key LIKE 'filler:%'")
    assert written == [(400,)]
    wal_bytes = Path(f"{db}-wal").stat().st_size
    listed = _invoke(state, *command)
    assert listed.exit_code == 0, listed.output
    warned = [line for line in listed.stderr.splitlines() if "crash recovery" in line]
    assert len(warned) == 1 and '"level": "warning"' in warned[0] and f"({wal_bytes} bytes)" in warned[0], \
        listed.stderr
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0, "the WAL was checkpointed"
    assert _read_only(db, "SELECT count(*) FROM hub_state WHERE key LIKE 'filler:%'") == written
    assert _recoveries(state) == [{"database": str(db), "wal_bytes": wal_bytes}]
    again = _invoke(state, "device", "list")
    assert again.exit_code == 0 and "crash recovery" not in again.stderr, again.stderr
    assert len(_recoveries(state)) == 1, "recorded once"
    assert _invoke(state, "audit", "verify").exit_code == 0


def test_a_wal_a_live_connection_holds_is_no_crash_to_recover_until_its_process_dies(tmp_path: Path) -> None:
    """``attest-hub api`` or another command has the database open without the state dir's lock: its WAL is not
    checked, checkpointed or recorded as a crash recovery; once that process is killed it is one."""
    state = tmp_path / "hub"
    assert _invoke(state, "init").exit_code == 0
    db = state / "hub.db"
    _served(_settings(state))
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sqlite3, sys, time
        conn = sqlite3.connect({str(db)!r}, isolation_level=None)
        conn.execute("PRAGMA wal_autocheckpoint=0")
        for i in range(50):
            conn.execute("INSERT INTO hub_state (key, value) VALUES (?, 'x')", (f"live:{{i}}",))
        print("ready", flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        wal = _digest(Path(f"{db}-wal"))
        listed = _invoke(state, "device", "list")
        assert listed.exit_code == 0 and "crash recovery" not in listed.stderr, listed.stderr
        assert _digest(Path(f"{db}-wal")) == wal, "the live connection's WAL was left to it"
        assert _recoveries(state) == []
    finally:
        writer.kill()  # a crash: the kernel drops its locks, the WAL stays
        writer.communicate()
    listed = _invoke(state, "device", "list")
    assert listed.exit_code == 0 and "crash recovery" in listed.stderr, listed.stderr
    assert len(_recoveries(state)) == 1


def test_a_connection_of_this_process_keeps_its_wal_and_its_lock(tmp_path: Path) -> None:
    """A command run in a process that has the database open (the demo, a test) sees that connection's WAL as
    live, every time: asking for the lock must not drop it (closing any descriptor of ``-shm`` would)."""
    state = tmp_path / "hub"
    assert _invoke(state, "init").exit_code == 0
    settings = _settings(state)
    _served(settings)
    files = sqlite_files(settings.effective_database_url)
    assert files is not None
    store = open_store(settings)
    try:
        with store.transaction() as conn:
            store.set_state(conn, "note", "written by this process")
        assert files.leftover() and files.in_use()
        for _ in range(3):
            listed = _invoke(state, "device", "list")
            assert listed.exit_code == 0 and "crash recovery" not in listed.stderr, listed.stderr
        assert files.in_use(), "this process still holds its connection's lock"
    finally:
        store.close()
    assert not files.in_use()


def test_the_lock_probe_of_a_command_does_not_refuse_a_serve_starting_at_that_moment(tmp_path: Path) -> None:
    """A command probes ``hub.lock`` (a shared flock for a moment) to see whether a hub serves; a ``serve``
    taking the lock during that moment retries instead of refusing, also when a killed hub's pid is still
    written in the file; a live holder is refused at once."""
    state = tmp_path / "hub"
    assert _invoke(state, "init").exit_code == 0
    settings = _settings(state)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (state / "hub.lock").write_text(f"{dead.pid} serve\n")  # what a SIGKILLed serve leaves
    probe = os.open(state / "hub.lock", os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
    threading.Timer(0.05, os.close, (probe,)).start()
    lock = StateLock(settings, "serve").acquire()
    try:
        subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            from hub.config import load_settings
            from hub.crypto.hubstate import StateLock
            assert StateLock.held(load_settings(None, environ={{}}, state_dir={str(state)!r}))
        """)], check=True, timeout=60)  # another process sees the hub serving
        with pytest.raises(StateLocked, match=f"pid {os.getpid()}"):
            StateLock(settings, "serve").acquire()
    finally:
        lock.release()


# --- the same through `attest-hub serve`, a fleet and a real broker --------------------------------------------


def _verdicts(db: Path) -> int:
    return int(_read_only(db, "SELECT count(*) FROM verdict")[0][0])  # type: ignore[call-overload]


def _serve(hub: HubProcess) -> subprocess.CompletedProcess[str]:
    base = hub.command[:hub.command.index("serve")]
    try:
        return subprocess.run([*base, "serve"], env=hub.environ, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("serve started on a database with a stale WAL") from exc


def _killed(hub: HubProcess) -> None:
    assert hub.proc is not None
    os.killpg(hub.proc.pid, signal.SIGKILL)  # a crash: no clean stop, the WAL stays
    hub.proc.wait()
    hub.proc = None


@pytest.mark.broker
@pytest.mark.slow
def test_serve_refuses_a_restored_database_beside_the_wal_of_a_killed_hub(
        broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 2, "honest:2", database_url="", **FAST_HUB)
    settings = env.settings
    db = settings.state_dir / "hub.db"
    backup = tmp_path / "backup.db"
    first = HubProcess(env).start()
    try:
        with Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
            assert fleet.wait_for_epoch(20) is not None, first.log_tail()
            fleet.publish_round()
            wait_until(lambda: _verdicts(db) >= 2, 15, "the first verdicts")
    finally:
        first.stop()  # a clean stop
    shutil.copy(db, backup)  # a cold backup between two runs
    second = HubProcess(env).start()
    try:
        with Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
            assert fleet.wait_for_epoch(20) is not None, second.log_tail()
            fleet.publish_round()
            wait_until(lambda: _verdicts(db) >= 4, 15, "the verdicts of the second run")
    finally:
        _killed(second)
    assert Path(f"{db}-wal").stat().st_size > 32
    _restore_leaving_the_wal(backup, db)
    before = _files(db)

    done = _serve(second)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 3 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert STALE in lines[0] and "hub.db-wal" in lines[0], lines[0]
    for command in (["report"], ["db", "accept-restore"]):
        _assert_refused(settings.state_dir, *command)
    assert _files(db) == before, "nothing applied the stale WAL"


@pytest.mark.broker
@pytest.mark.slow
def test_serve_starts_after_a_kill_9_with_its_own_wal_and_loses_no_verdict(
        broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 2, "honest:2", database_url="", **FAST_HUB)
    db = env.settings.state_dir / "hub.db"
    first = HubProcess(env).start()
    try:
        with Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
            assert fleet.wait_for_epoch(20) is not None, first.log_tail()
            for _ in range(3):
                fleet.publish_round()
                time.sleep(0.3)
            wait_until(lambda: _verdicts(db) >= 6, 15, "the verdicts before the crash")
    finally:
        _killed(first)
    wal_bytes = Path(f"{db}-wal").stat().st_size
    assert wal_bytes > 32, "the killed hub left its WAL"
    before = _read_only(db, "SELECT id, device_id, dedup_key, status FROM verdict ORDER BY id")
    assert len(before) >= 6

    second = HubProcess(env).start()
    try:
        # the log file is the first run's too: wait for the second start-up line
        wait_until(lambda: second.log_tail(10_000).count("serving with") == 2, 30,
                   f"serve to start\n{second.log_tail()}")
        warned = [line for line in second.log_tail(10_000).splitlines() if "crash recovery" in line]
        assert len(warned) == 1 and '"level": "warning"' in warned[0], second.log_tail()
        after = _read_only(db, "SELECT id, device_id, dedup_key, status FROM verdict ORDER BY id")
        assert after[:len(before)] == before, "every verdict committed before the crash is still there"
        with Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
            assert fleet.wait_for_epoch(20) is not None, second.log_tail()
            fleet.publish_round()
            wait_until(lambda: _verdicts(db) >= len(before) + 2, 15, "verdicts after the restart")
    finally:
        second.stop()
    # a clean stop leaves every write in the file, no log beside it, and the file's mark the one recorded
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    files = sqlite_files(env.settings.effective_database_url)
    assert files is not None and read_marks(env.settings) == (files.mark(),)
    assert _invoke(env.settings.state_dir, "audit", "verify").exit_code == 0
    assert _recoveries(env.settings.state_dir) == [{"database": str(db), "wal_bytes": wal_bytes}]
