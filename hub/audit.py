"""Tamper-evident audit log: each entry carries the hash of the one before it.

``entry_hash = SHA-256(prev_hash || canonical JSON of {id, at, actor, action, device_id, detail})``.
Including the id makes a removed or reordered entry break the chain as surely
as an edited one. Entries are appended inside the transaction of the change
they record, so a change and its audit entry commit together.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from hub.store.db import AUDIT, Store

_json_str = json.encoder.encode_basestring_ascii  # what json.dumps(ensure_ascii=True) writes for a str

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditDraft:
    at: float
    actor: str
    action: str
    device_id: str | None
    detail: Mapping[str, object]


_DETAIL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def entry_hash(prev_hash: str, entry: Mapping[str, Any]) -> str:
    canonical = _canonical_fast(entry)
    if canonical is None:
        canonical = _canonical(entry)
    return hashlib.sha256(prev_hash.encode() + canonical.encode()).hexdigest()


def _canonical_fast(entry: Mapping[str, Any]) -> str | None:
    """``_canonical``'s exact text, assembled directly for the usual types (int id, text fields); None
    for anything else. Keys in sorted order, strings escaped by the json module's own ASCII encoder."""
    ident, actor, action, device_id, detail = (entry["id"], entry["actor"], entry["action"], entry["device_id"],
                                               entry["detail"])
    if not (type(ident) is int and type(actor) is str and type(action) is str and type(detail) is str
            and (device_id is None or type(device_id) is str)):
        return None
    text = _json_str
    return (f'{{"action":{text(action)},"actor":{text(actor)},"at":{text(repr(float(entry["at"])))},'
            f'"detail":{text(detail)},"device_id":{"null" if device_id is None else text(device_id)},'
            f'"id":{int.__repr__(ident)}}}')


def _canonical(entry: Mapping[str, Any]) -> str:
    body = {
        "id": entry["id"],
        "at": repr(float(entry["at"])),
        "actor": entry["actor"],
        "action": entry["action"],
        "device_id": entry["device_id"],
        "detail": entry["detail"],
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def append(store: Store, conn: Connection, drafts: Sequence[AuditDraft]) -> None:
    """Append entries, chained, within the caller's transaction."""
    if not drafts:
        return
    prev = store.lock_audit_head(conn)
    next_id = int(conn.execute(select(func.coalesce(func.max(AUDIT.c.id), 0))).scalar_one()) + 1
    rows = []
    for offset, draft in enumerate(drafts):
        row: dict[str, Any] = {
            "id": next_id + offset,
            "at": draft.at,
            "actor": draft.actor,
            "action": draft.action,
            "device_id": draft.device_id,
            "detail": _DETAIL_JSON.encode(dict(draft.detail)),
            "prev_hash": prev,
        }
        row["entry_hash"] = prev = entry_hash(row["prev_hash"], row)
        rows.append(row)
    store.insert_audit(conn, rows)
    store.set_state(conn, "audit_head", prev)


def verify_chain(rows: Iterable[Mapping[str, Any]], start_hash: str = GENESIS, head: str | None = None) -> list[str]:
    """Problems found in a run of entries (empty when the chain is intact)."""
    problems: list[str] = []
    prev = start_hash
    expected_id: int | None = None
    for row in rows:
        if expected_id is not None and row["id"] != expected_id:
            problems.append(f"entry {row['id']}: expected id {expected_id} (an entry was removed or reordered)")
        if row["prev_hash"] != prev:
            problems.append(f"entry {row['id']}: prev_hash does not match the previous entry")
        if entry_hash(row["prev_hash"], row) != row["entry_hash"]:
            problems.append(f"entry {row['id']}: content does not match its hash (edited)")
        prev = row["entry_hash"]
        expected_id = int(row["id"]) + 1
    if head is not None and prev != head:
        problems.append("the last entry is not the recorded head (entries were removed from the end)")
    return problems
