"""The hub's database as found on disk: empty, truncated, malformed, foreign, behind the release, locked.

An empty or foreign database is never taken for a new hub; opening a store never changes the schema; a
database behind this release is refused until ``attest-hub db upgrade``, which completes a half-created
schema and upgrades a database made by every earlier migration with its data; readers do not wait for the
write lock.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

from hub.cli.main import cli
from hub.config import load_settings
from hub.crypto.hubstate import init_hub, open_store
from hub.server.localhub import DEMO_OPERATOR_KEY
from hub.store import Store
from hub.store.db import SchemaError
from hub.store.migrate import head_revision, revisions, upgrade

POLICY = Path(__file__).resolve().parents[1] / "firmware_manifests" / "env-sensor" / "policy.toml"
_KEY = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
ENROL = json.dumps({"devices": [{"device_id": "env-sensor-0001", "device_class": "env-sensor",
                                 "public_key_pem": _KEY}]})

# Every command that opens the database, with the arguments it needs to get that far.
DATABASE_COMMANDS = [
    ["serve"], ["device", "list"], ["device", "show", "env-sensor-0001"],
    ["device", "quarantine", "env-sensor-0001", "--reason", "x"], ["device", "release", "env-sensor-0001",
                                                                     "--reason", "x"],
    ["device", "revoke", "env-sensor-0001", "--reason", "x"], ["device", "enroll", "--file", "{enrol}"],
    ["anomalies", "close", "1", "--reason", "x"], ["manifest", "history"], ["policy", "history"],
    ["audit", "verify"], ["audit", "export"], ["audit", "show"], ["report"], ["whatif", "--policy", str(POLICY)],
    ["db", "upgrade"], ["db", "current"], ["db", "accept-restore"],
]


def invoke(state: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--state-dir", str(state), "--broker", "127.0.0.1:1", *args],
                              env={"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY)})


def initialised(tmp_path: Path) -> Path:
    state = tmp_path / "hub"
    result = invoke(state, "init")
    assert result.exit_code == 0, result.output
    return state


def assert_refused(result: Result, *words: str) -> None:
    """Exit 3, one line, no traceback (click's runner records any other exception)."""
    assert result.exit_code == 3, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert all(word in lines[0] for word in words), lines[0]


def commands(tmp_path: Path) -> list[list[str]]:
    enrol = tmp_path / "enrol.json"
    enrol.write_text(ENROL)
    return [[part.replace("{enrol}", str(enrol)) for part in command] for command in DATABASE_COMMANDS]


def test_a_state_dir_that_does_not_exist_is_refused_with_how_to_create_one(tmp_path: Path) -> None:
    state = tmp_path / "no-hub"
    for command in commands(tmp_path):
        result = invoke(state, *command)
        assert_refused(result, f"state dir {state} does not exist", f"attest-hub --state-dir {state} init")
        assert not state.exists(), command  # nothing was created by a command other than init


# --- item: an empty or foreign database is never a new hub -------------------------------------------


def test_init_creates_the_schema_at_head_and_opening_a_store_creates_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    with pytest.raises(SchemaError, match="empty"):
        Store(f"sqlite:///{empty}")
    assert inspect(create_engine(f"sqlite:///{empty}")).get_table_names() == [], "opening made no tables"
    state = initialised(tmp_path)
    store = open_store(load_settings(None, environ={}, state_dir=state))
    try:
        with store.reading() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == head_revision()
            assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
    finally:
        store.close()


def test_a_truncated_database_is_refused_by_every_command(tmp_path: Path) -> None:
    state = initialised(tmp_path)
    assert invoke(state, "device", "enroll", "--file", str(commands(tmp_path)[6][-1]),
                  "--allow-unknown-class").exit_code == 0
    (state / "hub.db").write_bytes(b"")  # truncated to zero bytes
    for suffix in ("-wal", "-shm"):
        Path(f"{state / 'hub.db'}{suffix}").unlink(missing_ok=True)
    for command in commands(tmp_path):
        if command[:2] in (["db", "upgrade"], ["db", "current"]):
            continue  # the explicit way to make a schema (the hub still refuses it after, below); a report
        assert_refused(invoke(state, *command), "empty")
    assert_refused(invoke(state, "init"), "empty", "accept-restore")  # init does not make it a new hub
    assert (state / "hub.db").stat().st_size == 0, "nothing created the schema"
    empty = invoke(state, "db", "current")
    assert empty.exit_code == 0 and "the database is empty" in empty.output and "None" not in empty.output
    upgraded = invoke(state, "db", "upgrade")  # an explicit schema: still not this hub's database
    assert upgraded.exit_code == 0 and "the database was empty" in upgraded.output, upgraded.output
    assert_refused(invoke(state, "device", "list"), "behind generation", "accept-restore")


@pytest.mark.parametrize("content", [b"this is not a database" * 100, b"SQLite format 3\x00" + b"\xff" * 4080])
def test_a_malformed_database_file_gives_one_line_and_exit_3_from_every_command(tmp_path: Path,
                                                                               content: bytes) -> None:
    state = initialised(tmp_path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state / 'hub.db'}{suffix}").unlink(missing_ok=True)
    (state / "hub.db").write_bytes(content)
    for command in [*commands(tmp_path), ["init"]]:
        assert_refused(invoke(state, *command))


def test_serve_on_a_malformed_database_prints_one_line_without_a_traceback(tmp_path: Path) -> None:
    state = initialised(tmp_path)
    (state / "hub.db").write_bytes(b"garbage" * 1000)
    command = [str(Path(sys.executable).parent / "attest-hub"), "--state-dir", str(state), "--broker", "127.0.0.1:1"]
    done = subprocess.run([*command, "serve"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY)})
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_foreign_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    state = tmp_path / "hub"
    state.mkdir()
    conn = sqlite3.connect(state / "hub.db")
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.commit()
    conn.close()
    assert_refused(invoke(state, "init"), "not an attest-hub database")
    assert_refused(invoke(state, "db", "upgrade"), "not an attest-hub database")
    assert_refused(invoke(state, "device", "list"), "not an attest-hub database")
    tables = inspect(create_engine(f"sqlite:///{state / 'hub.db'}")).get_table_names()
    assert tables == ["invoices"]


# --- item: schema upgrades are safe --------------------------------------------------------------------


def _database_at(path: Path, revision: str) -> str:
    url = f"sqlite:///{path}"
    store = Store(url, schema=False)
    try:
        assert upgrade(store.engine, revision) == revision
        with store.engine.begin() as conn:  # data, as that release would have stored it
            conn.execute(text("INSERT INTO device (device_id, device_class, key_version, status, tier, trust_vector, "
                              "last_problems, bootcount, seq, svn_high_water, reboots, enrolled_at, revoked, "
                              "quarantine_hold, command_seq) VALUES ('env-sensor-0001', 'env-sensor', 1, 'trusted', "
                              "2, '{}', '[]', 3, 17, 4, 0, 1.0, 0, 0, 5)"))
            conn.execute(text("INSERT INTO hub_state (key, value) VALUES ('epoch', '42')"))
    finally:
        store.close()
    return url


@pytest.mark.parametrize("revision", revisions()[:-1])
def test_a_database_made_by_an_earlier_migration_is_refused_then_upgraded_with_its_data(
        tmp_path: Path, revision: str) -> None:
    url = _database_at(tmp_path / "hub.db", revision)
    with pytest.raises(SchemaError, match="run `attest-hub db upgrade`"):
        Store(url)
    engine = create_engine(url)
    assert MigrationContext.configure(engine.connect()).get_current_revision() == revision, "opening changed nothing"
    store = Store(url, schema=False)
    try:
        assert upgrade(store.engine) == head_revision()
    finally:
        store.close()
    store = Store(url)
    try:
        with store.reading() as conn:
            device = store.devices(conn, ["env-sensor-0001"])["env-sensor-0001"]
            assert (device.status, device.bootcount, device.seq, device.command_seq) == ("trusted", 3, 17, 5)
            assert device.seq_window is None  # no anti-replay window yet: every counter below the mark was judged
            assert store.get_state(conn, "epoch") == "42"
            assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
    finally:
        store.close()


def test_db_upgrade_completes_a_half_created_schema(tmp_path: Path) -> None:
    """A database at the first revision to which an older release's create_all added the new tables (not their
    columns): the migration must complete it, not fail on "table already exists"."""
    url = _database_at(tmp_path / "hub.db", revisions()[0])
    engine = create_engine(url)
    SQLModel.metadata.create_all(engine)
    columns = {c["name"] for c in inspect(engine).get_columns("device")}
    assert "anomaly_finding" in inspect(engine).get_table_names() and "anomaly_hold" not in columns
    engine.dispose()
    state = tmp_path / "state"
    result = CliRunner().invoke(cli, ["--state-dir", str(state), "--database-url", url, "db", "upgrade"])
    assert result.exit_code == 0, result.output
    store = Store(url)
    try:
        with store.reading() as conn:
            assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
            assert store.devices(conn, ["env-sensor-0001"])["env-sensor-0001"].seq == 17
    finally:
        store.close()


def test_a_reader_does_not_wait_for_a_writers_lock(tmp_path: Path) -> None:
    state = initialised(tmp_path)
    settings = load_settings(None, environ={}, state_dir=state)
    init_hub(settings)
    writer = sqlite3.connect(state / "hub.db", isolation_level=None, timeout=30)
    writer.execute("BEGIN IMMEDIATE")  # a worker's batch in progress
    try:
        started = time.monotonic()
        result = invoke(state, "device", "list", "--json")
        took = time.monotonic() - started
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert result.exit_code == 0, result.output
    assert took < 3.0, f"device list waited {took:.1f} s for the writer (busy timeout is 5 s)"


def test_a_hub_from_before_generations_and_seals_is_adopted_by_init(tmp_path: Path) -> None:
    """An earlier release's state: no generation (database or state dir), no audit key, an unsealed chain."""
    state = initialised(tmp_path)
    enrol = tmp_path / "enrol.json"
    enrol.write_text(ENROL)
    assert invoke(state, "device", "enroll", "--file", str(enrol), "--allow-unknown-class").exit_code == 0
    (state / "generation.json").unlink()
    (state / "audit-key.bin").unlink()
    conn = sqlite3.connect(state / "hub.db")
    conn.execute("DELETE FROM hub_state WHERE key IN ('generation', 'audit_seal')")
    conn.commit()
    conn.close()
    assert_refused(invoke(state, "device", "list"), "audit-key.bin")
    assert invoke(state, "init").exit_code == 0
    assert invoke(state, "device", "list", "--ids").stdout.split() == ["env-sensor-0001"]
    verified = invoke(state, "audit", "verify")
    assert verified.exit_code == 0 and "intact: 1 entries" in verified.output, verified.output


@pytest.mark.parametrize("chains", ['{"hub-w0": "not a mark"}', '{"hub-w0": []}', '["hub-w0"]'])
def test_a_generation_record_with_malformed_chain_marks_is_refused_in_one_line(tmp_path: Path, chains: str) -> None:
    """The state dir's record also keeps each audit chain's last (seq, hash); a damaged one is named, not
    taken for 'no marks' (which would quietly stop the check of worker chains' tails)."""
    state = initialised(tmp_path)
    record = json.loads((state / "generation.json").read_text())
    assert isinstance(record["chains"], dict)
    (state / "generation.json").write_text(json.dumps(record)[:-1] + f', "chains": {chains}}}')
    assert_refused(invoke(state, "device", "list"), "generation.json", "unreadable")
