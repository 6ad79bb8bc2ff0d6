"""Per-worker audit chains: each worker appends to its own chain, `audit verify` checks them all as one log.

Two workers' pipelines (chains ``hub-w0`` and ``hub-w1``) and the hub's own chain ('') write one log; every
tamper case on a worker chain (edit, recomputed chain, cut tail, removed entry, the whole chain removed)
must be reported, exports and prunes must keep verifying, a database upgraded from the revision before
chains must verify as before, and on PostgreSQL two workers must commit without waiting for each other's
audit head.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import EPOCH, HubEnv, incoming
from sqlalchemy import text

from hub.appraisal.pipeline import Pipeline
from hub.appraisal.retention import prune
from hub.audit import GENESIS, AuditDraft, append, entry_hash, verify_export
from hub.cli.main import cli
from hub.config import load_settings
from hub.crypto import hubstate
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import open_store, step_generation
from hub.reference.values import References
from hub.server.localhub import DEMO_OPERATOR_KEY, prepare_state
from hub.store.migrate import downgrade, head_revision, upgrade

A, B, C = "smart-meter-0001", "smart-meter-0002", "smart-meter-0003"
W0, W1 = "hub-w0", "hub-w1"
DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def chain_env(tmp_path: Path, database: str) -> HubEnv:
    url = None
    if database == "postgresql":
        from tests.e2e import fresh_pg_database

        url = fresh_pg_database()
    settings = prepare_state(load_settings(None, environ={}, state_dir=tmp_path / "hub", database_url=url))
    keys = load_hub_keys(settings)
    store = open_store(settings)
    references = References(keys.operator_keys)
    with store.reading() as conn:
        assert references.load(store.latest_manifests(conn), store.latest_policies(conn)) == []
    env = HubEnv(settings, keys, store, references)
    env.set_epoch(EPOCH)
    return env


@pytest.fixture(params=DATABASES)
def env(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[HubEnv]:
    hub = chain_env(tmp_path, request.param)
    try:
        yield hub
    finally:
        hub.close()


def worker(env: HubEnv, chain: str) -> Pipeline:
    """A worker's pipeline: the store it opens itself, its own audit chain (as HubWorker sets it)."""
    store = open_store(env.settings)
    pipeline = Pipeline(store, env.pipeline().registry, env.keys, env.references)
    pipeline.decider.audit_chain = chain
    return pipeline


def attest(pipeline: Pipeline, env: HubEnv, *devices: str) -> None:
    outcome = pipeline.process([incoming(d, env.evidence(d)) for d in devices])
    assert [d.status for d in outcome.decisions] == ["affirming"] * len(devices), outcome


def two_workers(env: HubEnv) -> None:
    """Enrolments (hub chain), then batches of two workers interleaved: three chains in one log."""
    for device_id in (A, B, C):
        env.add_device(device_id)
    first, second = worker(env, W0), worker(env, W1)
    try:
        for _ in range(2):
            attest(first, env, A, C)
            attest(second, env, B)
    finally:
        first.store.close()
        second.store.close()


def cli_run(env: HubEnv, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--state-dir", str(env.settings.state_dir), "--database-url",
                                    env.settings.effective_database_url, *args],
                              env={"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY)}, catch_exceptions=False)


def verify(env: HubEnv) -> tuple[int, dict[str, Any]]:
    result = cli_run(env, "audit", "verify", "--json")
    return result.exit_code, json.loads(result.stdout)


def rows(env: HubEnv, chain: str | None = None) -> list[dict[str, Any]]:
    with env.store.reading() as conn:
        return [r for r in env.store.audit_rows(conn) if chain is None or r["chain"] == chain]


def sql(env: HubEnv, statement: str, **params: Any) -> None:
    with env.store.transaction() as conn:
        conn.execute(text(statement), params)


def test_two_workers_chains_verify_as_one_log(env: HubEnv) -> None:
    two_workers(env)
    code, data = verify(env)
    assert code == 0 and data["intact"] and data["problems"] == [], data
    assert data["chains"] == 3 and data["entries"] == len(rows(env))
    w0, w1 = rows(env, W0), rows(env, W1)
    assert [r["seq"] for r in w0] == list(range(1, len(w0) + 1)) and [r["seq"] for r in w1] == list(
        range(1, len(w1) + 1))
    assert w0[0]["prev_hash"] == GENESIS and w1[0]["prev_hash"] == GENESIS
    opened = [json.loads(r["detail"])["chain"] for r in rows(env, "") if r["action"] == "chain-opened"]
    assert opened == [W0, W1]
    ids = [r["id"] for r in rows(env)]
    assert ids == sorted(set(ids)), "one id order across the chains"
    with env.store.reading() as conn:
        assert {W0, W1, ""} <= set(env.store.audit_chains(conn))


def test_a_worker_chain_entry_covers_its_chain_and_position(env: HubEnv) -> None:
    """Moving an entry to another chain or position (and relinking it) changes its hash."""
    two_workers(env)
    entry = rows(env, W0)[1]
    assert entry_hash(entry["prev_hash"], entry) == entry["entry_hash"]
    assert entry_hash(entry["prev_hash"], {**entry, "chain": W1}) != entry["entry_hash"]
    assert entry_hash(entry["prev_hash"], {**entry, "seq": entry["seq"] + 1}) != entry["entry_hash"]


@pytest.mark.parametrize("tamper, expected", [
    ("UPDATE audit SET detail = replace(detail, 'affirming', 'warning') WHERE chain = 'hub-w1' AND seq = 2",
     "edited"),
    ("DELETE FROM audit WHERE chain = 'hub-w0' AND seq = 2", "removed or reordered"),
    ("DELETE FROM audit WHERE chain = 'hub-w0' AND seq = (SELECT max(seq) FROM audit WHERE chain = 'hub-w0')",
     "removed from the end"),
    ("UPDATE audit SET seq = seq + 100 WHERE chain = 'hub-w1' AND seq = 1", "edited"),
    ("UPDATE audit SET chain = 'hub-w1', seq = 100 WHERE chain = 'hub-w0' AND seq = 1", "edited"),
    ("DELETE FROM hub_state WHERE key = 'audit_seal:hub-w1'", "not sealed"),
    ("DELETE FROM hub_state WHERE key = 'audit_head:hub-w1'", "head of the chain of chain hub-w1 is missing"),
])
def test_tampering_with_a_worker_chain_is_detected(env: HubEnv, tamper: str, expected: str) -> None:
    two_workers(env)
    sql(env, tamper)
    code, data = verify(env)
    assert code == 1 and not data["intact"], data
    assert any(expected in p for p in data["problems"]), data["problems"]


def recompute(env: HubEnv, chain: str, entries: list[dict[str, Any]]) -> None:
    """Relink ``entries`` of ``chain`` from GENESIS and move its head: a forgery without the audit key."""
    prev = GENESIS
    for row in entries:
        row["prev_hash"] = prev
        row["entry_hash"] = prev = entry_hash(prev, row)
        sql(env, "UPDATE audit SET detail = :d, prev_hash = :p, entry_hash = :h WHERE id = :id",
            d=row["detail"], p=row["prev_hash"], h=row["entry_hash"], id=row["id"])
    sql(env, "UPDATE hub_state SET value = :v WHERE key = :k", v=prev, k=f"audit_head:{chain}")


def test_an_edited_worker_chain_recomputed_with_its_head_is_caught_by_its_seal(env: HubEnv) -> None:
    two_workers(env)
    entries = rows(env, W0)
    entries[1]["detail"] = entries[1]["detail"].replace("affirming", "warning")
    recompute(env, W0, entries)
    code, data = verify(env)
    assert code == 1 and any("seal of chain hub-w0 does not match" in p for p in data["problems"]), data
    assert not any("edited" in p or "prev_hash" in p for p in data["problems"]), "the links were made consistent"


def test_a_worker_chain_cut_short_with_its_head_moved_back_is_caught_by_its_seal(env: HubEnv) -> None:
    two_workers(env)
    entries = rows(env, W1)
    keep = entries[-3]
    sql(env, "DELETE FROM audit WHERE chain = :c AND seq > :s", c=W1, s=keep["seq"])
    sql(env, "UPDATE hub_state SET value = :v WHERE key = :k", v=keep["entry_hash"], k=f"audit_head:{W1}")
    code, data = verify(env)
    assert code == 1 and any("seal of chain hub-w1 does not match" in p for p in data["problems"]), data


def state_value(env: HubEnv, key: str) -> str:
    with env.store.reading() as conn:
        value = env.store.get_state(conn, key)
    assert value is not None
    return str(value)


def test_a_worker_chain_rolled_back_with_its_old_head_and_seal_is_caught_by_the_generation_record(
        env: HubEnv) -> None:
    """Head and seal copied from an older state of the same database: the seal matches, but the state
    directory recorded the chain's last entry at the generation step, and it is gone."""
    two_workers(env)
    entries = rows(env, W1)
    old_head, old_seal = state_value(env, f"audit_head:{W1}"), state_value(env, f"audit_seal:{W1}")
    extra = worker(env, W1)
    try:
        attest(extra, env, B)  # appended after the copy of head and seal was taken
    finally:
        extra.store.close()
    step_generation(env.settings, env.store)  # the leader's step records every chain's last entry
    sql(env, "DELETE FROM audit WHERE chain = :c AND seq > :s", c=W1, s=entries[-1]["seq"])
    sql(env, "UPDATE hub_state SET value = :v WHERE key = :k", v=old_head, k=f"audit_head:{W1}")
    sql(env, "UPDATE hub_state SET value = :v WHERE key = :k", v=old_seal, k=f"audit_seal:{W1}")
    code, data = verify(env)
    assert code == 1, data
    assert [p for p in data["problems"] if "chain hub-w1, recorded outside the database, is gone" in p], data


def test_accept_restore_counts_what_every_chain_lost(env: HubEnv) -> None:
    two_workers(env)
    before = {c: len(rows(env, c)) for c in (W0, W1)}
    step_generation(env.settings, env.store)
    hub_entries = rows(env, "")
    assert hub_entries[-1]["id"] - hub_entries[-2]["id"] > 1  # worker entries lie between: ids are not counts
    sql(env, "DELETE FROM audit WHERE chain = :c AND seq > 1", c=W0)
    sql(env, "DELETE FROM audit WHERE id = :i", i=hub_entries[-1]["id"])
    with env.store.transaction() as conn:
        database = hubstate._snapshot(env.store, conn)  # the counting rule itself, on the database's marks
    recorded = hubstate.read_generation(env.settings)
    assert hubstate.lost_entries(recorded, database) == before[W0] - 1 + 1


def test_a_worker_chain_removed_whole_is_detected(env: HubEnv) -> None:
    """Rows, head and seal gone: the hub chain still names it (its chain-opened entry, which is sealed)."""
    two_workers(env)
    sql(env, "DELETE FROM audit WHERE chain = 'hub-w1'")
    sql(env, "DELETE FROM hub_state WHERE key IN ('audit_head:hub-w1', 'audit_seal:hub-w1')")
    code, data = verify(env)
    assert code == 1 and any("chain hub-w1 has no entries left" in p for p in data["problems"]), data


def test_an_export_of_several_chains_verifies_as_a_file_and_its_edits_are_found(env: HubEnv, tmp_path: Path) -> None:
    two_workers(env)
    out = tmp_path / "q.jsonl"
    result = cli_run(env, "audit", "export", "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {line["chain"] for line in lines} == {"", W0, W1} and all("seq" in line for line in lines)
    assert cli_run(env, "audit", "verify", "--file", str(out)).exit_code == 0
    assert verify_export(lines[3:]) == [], "a window verifies from each chain's first prev_hash"
    victim = next(i for i, line in enumerate(lines) if line["chain"] == W0 and line["seq"] == 2)
    lines[victim]["detail"] = lines[victim]["detail"].replace("affirming", "warning")
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = cli_run(env, "audit", "verify", "--file", str(out))
    assert result.exit_code == 1 and "edited" in result.stdout
    del lines[victim]
    assert any("removed or reordered" in p for p in verify_export(lines))


def test_an_export_from_before_chains_still_verifies(env: HubEnv) -> None:
    for device_id in (A, B, C):
        env.add_device(device_id)
    old = [{k: v for k, v in r.items() if k not in ("chain", "seq")} for r in rows(env)]
    assert verify_export(old) == []
    del old[1]
    assert any("expected id" in p for p in verify_export(old))


def test_prune_keeps_every_chain_verifiable_and_the_workers_continue(env: HubEnv, tmp_path: Path) -> None:
    two_workers(env)
    total = len(rows(env))
    result = prune(env.store, env.keys, tmp_path / "archive", 4e9)
    assert result.audit == total - 2, "each worker chain keeps its newest entry"
    assert {r["chain"] for r in rows(env)} == {"", W0, W1}
    assert result.checkpoint is not None and set(result.checkpoint.chains) == {W0, W1}
    code, data = verify(env)
    assert code == 0, data
    again = worker(env, W0)
    try:
        attest(again, env, A)
    finally:
        again.store.close()
    code, data = verify(env)
    assert code == 0, data
    exported = [json.loads(line) for f in sorted((tmp_path / "archive").glob("audit-*.jsonl"))
                for line in f.read_text().splitlines()]
    assert verify_export(exported) == []
    sql(env, "DELETE FROM audit WHERE chain = 'hub-w1'")  # the kept entry of a pruned chain
    code, data = verify(env)
    assert code == 1, data


def test_a_database_upgraded_from_before_chains_keeps_verifying(env: HubEnv) -> None:
    """Entries written at revision 0004 (one chain, no chain/seq columns) verify after the upgrade, and the
    workers' chains continue from there (on PostgreSQL, ids from the sequence, set past the old ones)."""
    for device_id in (A, B):
        env.add_device(device_id)
    attest(env.pipeline(), env, A, B)
    before = rows(env)
    assert verify(env)[0] == 0
    env.store.close()
    from hub.store import Store

    raw = Store(env.settings.effective_database_url, schema=False)
    try:
        downgrade(raw.engine, "0004")
        with raw.reading() as conn:
            assert "seq" not in set(conn.execute(text("SELECT * FROM audit")).keys())
        assert upgrade(raw.engine) == head_revision()
    finally:
        raw.close()
    env.store = open_store(env.settings)
    after = rows(env)
    assert [(r["id"], r["chain"], r["seq"], r["entry_hash"]) for r in after] == [
        (r["id"], "", r["id"], r["entry_hash"]) for r in before]
    code, data = verify(env)
    assert code == 0, data
    pipeline = worker(env, W0)
    try:
        attest(pipeline, env, A)
    finally:
        pipeline.store.close()
    code, data = verify(env)
    assert code == 0 and data["chains"] == 2, data
    assert min(r["id"] for r in rows(env, W0)) > max(r["id"] for r in before)


@pytest.mark.postgres
def test_two_workers_commit_concurrently_without_waiting_on_one_audit_row(tmp_path: Path) -> None:
    """One worker's transaction holds its chain's head (appended, not committed); the other worker's whole
    batch, audit entries included, commits meanwhile. With one global head it would wait for the first."""
    env = chain_env(tmp_path, "postgresql")
    first, second = worker(env, W0), worker(env, W1)
    try:
        for device_id in (A, B):
            env.add_device(device_id)
        attest(first, env, A)  # both chains exist (opening one appends to the hub chain once)
        attest(second, env, B)
        done = threading.Event()
        errors: list[BaseException] = []

        def other() -> None:
            try:
                attest(second, env, B)
                done.set()
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        with first.store.transaction() as conn:
            append(first.store, conn, [AuditDraft(1.0, "hub", "note", A, {"held": True})], W0)
            thread = threading.Thread(target=other)
            thread.start()
            thread.join(60)  # liveness, not timing: without per-chain heads it would wait for this commit
            finished = done.is_set()
        thread.join()
        assert errors == [] and finished, "the second worker waited for the first worker's audit head"
        code, data = verify(env)
        assert code == 0 and data["chains"] == 3, data
    finally:
        first.store.close()
        second.store.close()
        env.close()


def test_the_auditors_checker_in_the_docs_checks_every_chain(env: HubEnv, tmp_path: Path) -> None:
    import subprocess
    import sys

    from test_operations_doc import checker_snippet

    two_workers(env)
    lines = cli_run(env, "audit", "export").stdout.splitlines()
    checker = tmp_path / "check.py"
    checker.write_text(checker_snippet())

    def check(content: list[str]) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "export.jsonl"
        path.write_text("".join(line + "\n" for line in content))
        return subprocess.run([sys.executable, str(checker), str(path)], capture_output=True, text=True, check=False)

    good = check(lines)
    assert good.returncode == 0 and "(3 chains)" in good.stdout, good.stdout + good.stderr
    victim = next(i for i, line in enumerate(lines) if json.loads(line)["chain"] == W1 and json.loads(line)["seq"] == 2)
    edited = json.loads(lines[victim])
    edited["seq"] = 3
    assert "edited" in check([*lines[:victim], json.dumps(edited), *lines[victim + 1:]]).stderr
    assert "removed or reordered" in check([*lines[:victim], *lines[victim + 1:]]).stderr


def test_a_hub_worker_appends_to_the_chain_named_by_its_client_id(tmp_path: Path) -> None:
    from hub.server.worker import HubWorker

    env = chain_env(tmp_path, "sqlite")
    try:
        worker_ = HubWorker(env.settings, 3)
        try:
            assert worker_.pipeline.decider.audit_chain == f"{env.settings.hub_id}-w3"
            assert worker_.transport.address.client_id == f"{env.settings.hub_id}-w3"
        finally:
            worker_.store.close()
    finally:
        env.close()
