"""Retention: ``attest-hub db prune`` exports old verdicts, audit entries and rejection counts, deletes them,
and leaves an audit chain that still verifies from a hub-signed checkpoint; the leader does it on a schedule."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from helpers import HubEnv, env_fixture, incoming, only, run_cli

from hub import wire
from hub.appraisal.retention import AUDIT_FIELDS, CHECKPOINT_KEY, prune, read_checkpoint
from hub.audit import GENESIS
from hub.cli.audit import EXPORT_FIELDS
from hub.crypto.cose import sign1
from hub.crypto.keys import generate_p256
from hub.store.rejections import total_rejections

A, B = "smart-meter-0001", "smart-meter-0002"


env = env_fixture(A, B)


def run(env: HubEnv, *args: str) -> Result:
    result: Result = run_cli(env, *args)
    return result


def history(env: HubEnv) -> None:
    pipeline = env.pipeline()
    for _ in range(4):
        only(pipeline.process([incoming(A, env.evidence(A))]))
    earlier = time.time() - 120  # counted in a minute that is over (the current one is still being counted)
    env.pipeline(clock=lambda: earlier).process([incoming(A, b"\xd2\x84garbage%d" % i) for i in range(3)])
    only(pipeline.process([incoming(B, env.evidence(B))]))


def count(env: HubEnv, table: str) -> int:
    with env.store.reading() as conn:
        return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_format_is_the_audit_export_format() -> None:
    assert AUDIT_FIELDS == EXPORT_FIELDS


def test_prune_exports_then_deletes_and_the_chain_still_verifies(env: HubEnv, tmp_path: Path) -> None:
    history(env)
    latest_a = env.verdicts(A)[3]
    entries = count(env, "audit")
    archive = tmp_path / "archive"
    result = run(env, "db", "prune", "--older-than", "0s", "--out", str(archive), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["verdicts"] == 6 and data["audit_entries"] == entries and data["rejection_counts"] == 1
    # kept: each device's latest appraised verdict (what-if and reports read it)
    assert [v["id"] for v in env.verdicts(A)] == [latest_a["id"]] and len(env.verdicts(B)) == 1
    exported = [v for f in sorted(archive.glob("verdicts-*.jsonl")) for v in lines(f)]
    assert len(exported) == 6 and {v["status"] for v in exported} == {"affirming", "rejected"}
    assert all(base64.b64decode(v["evidence"]) for v in exported if v["authenticated"])
    with env.store.reading() as conn:
        assert total_rejections(conn, A) == 0
    [audit_file] = sorted(archive.glob("audit-*.jsonl"))
    assert len(lines(audit_file)) == entries and lines(audit_file)[0]["prev_hash"] == GENESIS
    assert run(env, "audit", "verify", "--file", str(audit_file)).exit_code == 0
    # the database now holds the prune's own entry, chained to the signed checkpoint
    assert count(env, "audit") == 1
    verify = run(env, "audit", "verify", "--json")
    assert verify.exit_code == 0, verify.output
    assert json.loads(verify.stdout)["intact"] is True
    only(env.pipeline().process([incoming(B, env.evidence(B))]))
    assert run(env, "audit", "verify").exit_code == 0


def test_a_second_prune_continues_the_exported_chain(env: HubEnv, tmp_path: Path) -> None:
    history(env)
    archive = tmp_path / "archive"
    first = run(env, "db", "prune", "--older-than", "0s", "--out", str(archive))
    assert first.exit_code == 0, first.output
    assert "pruned 6 verdicts, 12 audit entries and 1 rejection counts" in first.output
    time.sleep(0.01)
    only(env.pipeline().process([incoming(B, env.evidence(B))]))
    assert run(env, "db", "prune", "--older-than", "0s", "--out", str(archive)).exit_code == 0
    files = sorted(archive.glob("audit-*.jsonl"))
    assert len(files) == 2
    joined = tmp_path / "all.jsonl"
    joined.write_text("".join(f.read_text() for f in files))
    assert run(env, "audit", "verify", "--file", str(joined)).exit_code == 0
    with env.store.reading() as conn:
        checkpoint = read_checkpoint(env.store, conn, env.keys.public_key)
    assert checkpoint is not None and checkpoint.entries == sum(len(lines(f)) for f in files)
    assert run(env, "audit", "verify").exit_code == 0


def _tamper(env: HubEnv, sql: str, *params: object) -> None:
    with env.store.transaction() as conn:
        conn.exec_driver_sql(sql, params)


@pytest.mark.parametrize("case", ["delete-first-kept", "forged-checkpoint", "checkpoint-removed", "checkpoint-moved"])
def test_tampering_after_a_prune_is_detected(env: HubEnv, tmp_path: Path, case: str) -> None:
    history(env)
    assert run(env, "db", "prune", "--older-than", "0s", "--out", str(tmp_path / "a")).exit_code == 0
    for _ in range(2):
        only(env.pipeline().process([incoming(B, env.evidence(B))]))
    assert run(env, "audit", "verify").exit_code == 0
    with env.store.reading() as conn:
        first = int(conn.exec_driver_sql("SELECT min(id) FROM audit").scalar_one())
        stored = env.store.get_state(conn, CHECKPOINT_KEY)
    assert stored is not None
    if case == "delete-first-kept":
        _tamper(env, "DELETE FROM audit WHERE id = ?", first)
    elif case == "forged-checkpoint":  # a checkpoint signed by another key, moved past more entries
        with env.store.reading() as conn:
            row = conn.exec_driver_sql("SELECT id, entry_hash FROM audit WHERE id = ?", (first,)).one()
        import cbor2

        body = cbor2.dumps({"through": row[0], "hash": row[1], "entries": 99, "at": 0, "file": "x", "sha256": "0"})
        forged = base64.b64encode(sign1(body, generate_p256(), kid=b"x")).decode()
        _tamper(env, "DELETE FROM audit WHERE id = ?", first)
        _tamper(env, "UPDATE hub_state SET value = ? WHERE key = ?", forged, CHECKPOINT_KEY)
    elif case == "checkpoint-removed":
        _tamper(env, "DELETE FROM hub_state WHERE key = ?", CHECKPOINT_KEY)
    else:
        _tamper(env, "UPDATE hub_state SET value = ? WHERE key = ?", stored[:-8] + "AAAAAAA=", CHECKPOINT_KEY)
    result = run(env, "audit", "verify", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["intact"] is False, result.output


def test_signed_malformed_evidence_keeps_its_key_across_a_prune(env: HubEnv, tmp_path: Path) -> None:
    """Its dedup key is what stops a replay of it from re-quarantining the device (docs/SECURITY.md)."""
    claims = env.claims(A)
    claims[wire.EAT_PROFILE] = "tag:example.com,2026:other"
    bad = env.evidence(A, claims)
    pipeline = env.pipeline()
    assert only(pipeline.process([incoming(A, bad)])).action == "quarantine"
    assert only(pipeline.process([incoming(A, env.evidence(A))])).action == "release"
    assert run(env, "db", "prune", "--older-than", "0s", "--out", str(tmp_path / "a")).exit_code == 0
    assert only(pipeline.process([incoming(A, bad)])).status == "duplicate"
    assert env.device(A).status == "trusted"


def test_prune_keeps_what_is_younger_than_the_cutoff(env: HubEnv, tmp_path: Path) -> None:
    old = time.time() - 10 * 86400
    pipeline = env.pipeline(clock=lambda: old)
    for _ in range(3):
        only(pipeline.process([incoming(A, env.evidence(A))]))
    only(env.pipeline().process([incoming(A, env.evidence(A))]))  # now
    result = prune(env.store, env.keys, tmp_path / "a", time.time() - 86400)
    assert result.verdicts == 3 and len(env.verdicts(A)) == 1
    assert result.audit == 0  # the enrolment entries (now) come first: no prefix is older than the cut-off


def test_prune_needs_an_age(env: HubEnv) -> None:
    result = run(env, "db", "prune")
    assert result.exit_code == 1 and "--older-than" in result.output


def test_leader_prunes_on_a_schedule(env: HubEnv, tmp_path: Path) -> None:
    from dataclasses import replace

    from hub.server.worker import HubWorker

    history(env)
    settings = replace(env.settings, retention_days=1e-9, retention_dir=str(tmp_path / "leader"),
                       retention_interval_s=3600.0)
    worker = HubWorker(settings, 0)
    try:
        worker._keep_retention()
        assert len(env.verdicts(A)) == 1 and count(env, "audit") == 1
        assert sorted(p.name.split("-")[0] for p in (tmp_path / "leader").iterdir()) == [
            "audit", "rejections", "verdicts"]
        only(env.pipeline().process([incoming(B, env.evidence(B))]))
        worker._keep_retention()  # not yet due again
        assert len(env.verdicts(B)) == 2
    finally:
        worker.store.close()
    assert run(env, "audit", "verify").exit_code == 0


def test_a_leader_whose_archive_cannot_be_created_logs_and_keeps_running(
        env: HubEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from dataclasses import replace

    from hub.server.worker import HubWorker

    history(env)
    (tmp_path / "a-file").write_text("")
    archive = tmp_path / "a-file" / "archive"  # under a file: cannot be created
    settings = replace(env.settings, retention_days=1e-9, retention_dir=str(archive), retention_interval_s=3600.0)
    worker = HubWorker(settings, 0)
    try:
        worker._keep_retention()  # an OSError here would end the leader's loop
    finally:
        worker.store.close()
    assert any(f"cannot create the archive folder {archive}" in r.getMessage() for r in caplog.records)
    assert len(env.verdicts(A)) > 1  # nothing pruned without its export


def test_a_retention_interval_of_zero_is_refused() -> None:
    from hub.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="retention_interval_s"):
        load_settings(None, environ={}, retention_days=30.0, retention_interval_s=0.0)
    assert load_settings(None, environ={"ATTEST_HUB_RETENTION_DAYS": "400"}).retention_days == 400.0
