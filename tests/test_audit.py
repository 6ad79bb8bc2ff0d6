"""The hash-chained audit log: edits, removals and reorderings are detected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import HubEnv, build_env, incoming

from hub.audit import GENESIS, AuditDraft, append, entry_hash, verify_chain


@pytest.fixture
def env(tmp_path: Path) -> Iterator[HubEnv]:
    hub = build_env(tmp_path)
    try:
        yield hub
    finally:
        hub.close()


def rows(env: HubEnv, count: int = 6) -> tuple[list[dict[str, Any]], str]:
    with env.store.transaction() as conn:
        append(env.store, conn, [AuditDraft(1000.0 + i, "test", "note", f"d{i}", {"i": i}) for i in range(count)])
    with env.store.reading() as conn:
        head = env.store.get_state(conn, "audit_head")
        assert head is not None
        return env.store.audit_rows(conn), head


def test_intact_chain_verifies(env: HubEnv) -> None:
    entries, head = rows(env)
    assert verify_chain(entries, GENESIS, head) == []
    assert entries[0]["prev_hash"] == GENESIS and entries[-1]["entry_hash"] == head


def test_pipeline_and_operations_append_to_the_chain(env: HubEnv) -> None:
    env.add_device("smart-meter-0001")
    env.pipeline().process([incoming("smart-meter-0001", env.evidence("smart-meter-0001"))])
    with env.store.reading() as conn:
        entries = env.store.audit_rows(conn)
        head = env.store.get_state(conn, "audit_head")
    assert {e["action"] for e in entries} >= {"enrol", "verdict", "status"}
    assert verify_chain(entries, GENESIS, head) == []


@pytest.mark.parametrize("field", ["detail", "actor", "action", "device_id", "at"])
def test_edited_entry_detected(env: HubEnv, field: str) -> None:
    entries, head = rows(env)
    entries[2] = {**entries[2], field: 1.5 if field == "at" else '{"i":99}' if field == "detail" else "forged"}
    problems = verify_chain(entries, GENESIS, head)
    assert any("edited" in p for p in problems)


def test_edited_entry_with_recomputed_hash_detected(env: HubEnv) -> None:
    """Rewriting an entry and its own hash breaks the next entry's link."""
    entries, head = rows(env)
    edited = {**entries[2], "detail": '{"i":99}'}
    edited["entry_hash"] = entry_hash(edited["prev_hash"], edited)
    entries[2] = edited
    assert any("prev_hash" in p for p in verify_chain(entries, GENESIS, head))


def test_removed_entry_detected(env: HubEnv) -> None:
    entries, head = rows(env)
    del entries[3]
    problems = verify_chain(entries, GENESIS, head)
    assert any("removed or reordered" in p for p in problems)


def test_removed_first_entry_detected(env: HubEnv) -> None:
    entries, head = rows(env)
    assert verify_chain(entries[1:], GENESIS, head) != []


def test_removed_tail_detected(env: HubEnv) -> None:
    entries, head = rows(env)
    problems = verify_chain(entries[:-2], GENESIS, head)
    assert problems and "head" in problems[-1]


def test_reordered_entries_detected(env: HubEnv) -> None:
    entries, head = rows(env)
    entries[1], entries[2] = entries[2], entries[1]
    assert any("removed or reordered" in p for p in verify_chain(entries, GENESIS, head))


def test_renumbered_entries_detected(env: HubEnv) -> None:
    """Closing the gap left by a removal (renumbering ids) changes the hashed content."""
    entries, head = rows(env)
    del entries[3]
    for row in entries[3:]:
        row["id"] -= 1
    assert any("edited" in p for p in verify_chain(entries, GENESIS, head))


def test_a_window_of_the_chain_verifies_from_its_predecessor(env: HubEnv) -> None:
    entries, _ = rows(env)
    assert verify_chain(entries[3:], entries[2]["entry_hash"]) == []
    assert verify_chain(entries[3:], GENESIS) != []
