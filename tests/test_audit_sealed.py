"""The audit chain against someone who can write the database: recomputed chains, cut tails, old seals.

The attacker here has the database only (not the state directory): they edit an entry and recompute every
hash after it and the head, or delete the newest entries and move the head back, or also put back the seal
they copied from an earlier state. ``attest-hub audit verify`` must report each.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import HubEnv, build_env, incoming, run_cli
from sqlalchemy import text

from device_sim import firmware
from device_sim.records import Profile
from hub.audit import GENESIS, entry_hash
from hub.crypto.hubstate import read_generation, step_generation


@pytest.fixture
def env(tmp_path: Path) -> Iterator[HubEnv]:
    hub = build_env(tmp_path)
    try:
        yield hub
    finally:
        hub.close()


def populate(env: HubEnv, *devices: str) -> None:
    for device_id in devices:
        env.add_device(device_id, firmware.ENV_SENSOR, Profile.HONEST)
    pipeline = env.pipeline()
    for device_id in devices:
        pipeline.process([incoming(device_id, env.devices[device_id].make_evidence(env.epoch_nonce))])


def rows(env: HubEnv) -> list[dict[str, Any]]:
    with env.store.reading() as conn:
        return env.store.audit_rows(conn)


def state(env: HubEnv, key: str) -> str | None:
    with env.store.reading() as conn:
        return env.store.get_state(conn, key)


def sql(env: HubEnv, statement: str, **params: Any) -> None:
    with env.store.transaction() as conn:
        conn.execute(text(statement), params)


def verify(env: HubEnv) -> tuple[int, list[str]]:
    result = run_cli(env, "audit", "verify", "--json")
    return result.exit_code, json.loads(result.stdout)["problems"] if result.stdout.startswith("{") else [
        result.output]


def recompute_from(env: HubEnv, first_id: int) -> None:
    """Rewrite prev_hash/entry_hash of every entry from ``first_id`` on, and the head: an unkeyed chain's forgery."""
    entries = rows(env)
    prev = GENESIS
    for row in entries:
        if row["id"] >= first_id:
            row["prev_hash"] = prev
            row["entry_hash"] = entry_hash(prev, row)
            sql(env, "UPDATE audit SET prev_hash = :p, entry_hash = :h WHERE id = :id",
                p=row["prev_hash"], h=row["entry_hash"], id=row["id"])
        prev = row["entry_hash"]
    sql(env, "UPDATE hub_state SET value = :v WHERE key = 'audit_head'", v=prev)


def test_an_intact_chain_verifies(env: HubEnv) -> None:
    populate(env, "env-sensor-0001", "env-sensor-0002")
    assert verify(env) == (0, [])


def test_an_edited_entry_with_the_chain_and_head_recomputed_is_detected(env: HubEnv) -> None:
    populate(env, "env-sensor-0001", "env-sensor-0002")
    sql(env, "UPDATE audit SET detail = replace(detail, 'env-sensor', 'gas-sensor') WHERE id = 2")
    recompute_from(env, 2)
    code, problems = verify(env)
    assert code == 1 and any("seal does not match" in p for p in problems), problems
    assert not any("prev_hash" in p or "edited" in p for p in problems), "the links themselves were made consistent"


def test_entries_removed_from_the_end_with_the_head_moved_back_are_detected(env: HubEnv) -> None:
    populate(env, "env-sensor-0001", "env-sensor-0002")
    last = rows(env)[-3]
    sql(env, "DELETE FROM audit WHERE id > :id", id=last["id"])
    sql(env, "UPDATE hub_state SET value = :v WHERE key = 'audit_head'", v=last["entry_hash"])
    code, problems = verify(env)
    assert code == 1 and any("seal does not match" in p for p in problems), problems


def test_a_removed_seal_is_detected(env: HubEnv) -> None:
    populate(env, "env-sensor-0001")
    sql(env, "DELETE FROM hub_state WHERE key = 'audit_seal'")
    code, problems = verify(env)
    assert code == 1 and any("not sealed" in p for p in problems), problems


def test_a_tail_cut_back_to_an_old_sealed_state_is_caught_by_the_checkpoint(env: HubEnv) -> None:
    """Copy head and seal, let the hub go on (a generation step records its checkpoint outside the database),
    then cut the newer entries and put the old head and seal back: consistent inside the database."""
    populate(env, "env-sensor-0001")
    old_head, old_seal, old_last = state(env, "audit_head"), state(env, "audit_seal"), rows(env)[-1]["id"]
    populate(env, "env-sensor-0002")
    recorded = step_generation(env.settings, env.store)
    assert recorded.audit_id > old_last and read_generation(env.settings) == recorded
    sql(env, "DELETE FROM audit WHERE id > :id", id=old_last)
    sql(env, "UPDATE hub_state SET value = :v WHERE key = 'audit_head'", v=old_head)
    sql(env, "UPDATE hub_state SET value = :v WHERE key = 'audit_seal'", v=old_seal)
    code, problems = verify(env)
    assert code == 1 and problems and all("recorded outside the database" in p for p in problems), problems


def test_a_chain_rewritten_up_to_the_checkpoint_and_resealed_is_not_possible_without_the_key(env: HubEnv) -> None:
    populate(env, "env-sensor-0001", "env-sensor-0002")
    step_generation(env.settings, env.store)
    sql(env, "UPDATE audit SET actor = 'someone-else' WHERE id = 1")
    recompute_from(env, 1)
    code, problems = verify(env)
    assert code == 1
    assert any("seal does not match" in p for p in problems) and any("differs from the hash recorded" in p
                                                                      for p in problems), problems
