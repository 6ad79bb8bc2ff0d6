"""Tamper-evident audit log: each entry carries the hash of the one before it, and the head is sealed.

``entry_hash = SHA-256(prev_hash || canonical JSON of {id, at, actor, action, device_id, detail})``.
Including the id makes a removed or reordered entry break the chain as surely
as an edited one. Entries are appended inside the transaction of the change
they record, so a change and its audit entry commit together.

The chain itself is public (an auditor recomputes it from an export without
any key), so whoever can write the database could edit an entry and recompute
every hash after it. Against that, each append also stores the *seal*
``HMAC-SHA-256(audit key, "attest-hub audit seal" || last id || head)`` with a
key kept in the hub's state directory, never in the database: a recomputed
chain or a head moved back (entries removed from the end) no longer matches
the seal. Removing the tail *and* putting back a seal copied from an older
state (a rollback) is caught by the checkpoint outside the database
(hub/crypto/hubstate.py: the last id and head as of the last generation step).
docs/SECURITY.md says exactly what this does and does not protect against.
"""

from __future__ import annotations

import hashlib
import hmac
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


def seal(key: bytes, last_id: int, head: str) -> str:
    """The keyed seal of the chain's head (hex HMAC-SHA-256); ``last_id`` 0 and ``GENESIS`` for no entries."""
    return hmac.new(key, b"attest-hub audit seal\x00" + f"{int(last_id)}:{head}".encode(), hashlib.sha256).hexdigest()


class AuditKeyMissing(RuntimeError):
    """A store opened without the hub's audit key was asked to append (open it with ``open_store``)."""


def append(store: Store, conn: Connection, drafts: Sequence[AuditDraft]) -> None:
    """Append entries, chained, within the caller's transaction, and reseal the head.

    Raises ``AuditKeyMissing`` if ``store`` was not opened with the audit key
    (``hub.crypto.hubstate.open_store``)."""
    if not drafts:
        return
    if not store.audit_key:
        raise AuditKeyMissing("this store was opened without the hub's audit key; open it with "
                              "hub.crypto.hubstate.open_store(settings)")
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
    store.set_state(conn, "audit_seal", seal(store.audit_key, rows[-1]["id"], prev))


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


def verify_sealed(rows: Sequence[Mapping[str, Any]], head: str | None, sealed: str | None, key: bytes,
                  checkpoint: tuple[int, str] | None = None, *, start_hash: str = GENESIS) -> list[str]:
    """Problems in the database's whole chain: links (``verify_chain`` from ``start_hash``: GENESIS, or the
    hash a signed prune checkpoint ends at), the recorded head, its keyed seal, and ``checkpoint`` ((id,
    entry_hash) recorded outside the database), which must still be in the chain unless it was pruned."""
    problems = verify_chain(rows, start_hash, head)
    if rows and head is None:
        problems.append("the recorded head of the chain is missing")
    last_id = int(rows[-1]["id"]) if rows else 0
    last_hash = str(rows[-1]["entry_hash"]) if rows else GENESIS
    if sealed is None:
        if rows:
            problems.append("the head of the chain is not sealed (the seal was removed)")
    elif not hmac.compare_digest(sealed, seal(key, last_id, last_hash)):
        problems.append("the seal does not match the last entry: the chain was recomputed or entries were removed "
                        "from the end")
    first_id = int(rows[0]["id"]) if rows else 1
    if checkpoint is not None and checkpoint[0] >= first_id:
        at = next((r for r in rows if int(r["id"]) == checkpoint[0]), None)
        if at is None:
            problems.append(f"entry {checkpoint[0]}, recorded outside the database, is gone: entries were removed "
                            "from the end (or the database was rolled back)")
        elif not hmac.compare_digest(str(at["entry_hash"]), checkpoint[1]):
            problems.append(f"entry {checkpoint[0]} differs from the hash recorded outside the database: the chain "
                            "was rewritten up to it")
    return problems
