"""Tamper-evident audit log: chains of entries, each carrying the hash of the one before it, each head sealed.

The log is a set of chains, ordered together by the global ``id``:

* the hub chain (``chain`` ``''``): operator actions, the leader's work, everything that is not a worker's
  evidence batch. ``entry_hash = SHA-256(prev_hash || canonical JSON of {id, at, actor, action, device_id,
  detail})``, as since the first release; its head and seal are the hub_state rows ``audit_head`` and
  ``audit_seal``;
* one chain per worker (``chain`` = the worker's MQTT client id, ``{hub_id}-w{index}``, unique across
  machines) for the entries of its evidence batches. Its canonical JSON also covers ``chain`` and ``seq``:
  ``{action, actor, at, chain, detail, device_id, id, seq}``; head and seal are ``audit_head:<chain>`` and
  ``audit_seal:<chain>``. The first entry of a new chain is announced by a ``chain-opened`` entry on the
  hub chain, so ``verify_log`` reports a worker chain deleted whole (rows, head and seal).

``seq`` numbers a chain's entries 1, 2, 3, ... (for the hub chain, entries written before chains existed
keep ``seq = id``). Including the id and the position makes a removed or reordered entry break a chain as
surely as an edited one. Each chain is locked on its own (its head row), so two workers never wait for
each other's audit head. Entries are appended inside the transaction of the change they record.

The chains themselves are public (an auditor recomputes them from an export without any key), so whoever
can write the database could edit an entry and recompute every hash after it. Against that, each append
also stores the chain's *seal*, ``HMAC-SHA-256(audit key, "attest-hub audit seal\\0" || "<last id>:<head>")``
for the hub chain and ``... || "<chain>\\0<last seq>:<head>"`` for a worker chain, with a key kept in the
hub's state directory, never in the database: a recomputed chain or a head moved back (entries removed
from the end) no longer matches the seal. Removing the hub chain's tail *and* putting back a seal copied
from an older state (a rollback) is caught by the checkpoint outside the database
(hub/crypto/hubstate.py: the last id and head as of the last generation step). docs/SECURITY.md says
exactly what this does and does not protect against.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from hub.store.db import Store

_json_str = json.encoder.encode_basestring_ascii  # what json.dumps(ensure_ascii=True) writes for a str

GENESIS = "0" * 64
HUB_CHAIN = ""
"""The hub's own chain (operator actions, the leader); worker chains are named by their MQTT client id."""
CHAIN_OPENED = "chain-opened"


@dataclass(frozen=True, slots=True)
class AuditDraft:
    at: float
    actor: str
    action: str
    device_id: str | None
    detail: Mapping[str, object]


_DETAIL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def entry_hash(prev_hash: str, entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``prev_hash`` and the entry's canonical JSON (its chain's formula, module doc)."""
    canonical = _canonical_fast(entry)
    if canonical is None:
        canonical = _canonical(entry)
    return hashlib.sha256(prev_hash.encode() + canonical.encode()).hexdigest()


def chain_of(entry: Mapping[str, Any]) -> str:
    """The entry's chain; an entry exported before chains existed has none: the hub chain."""
    return str(entry.get("chain") or HUB_CHAIN)


def seq_of(entry: Mapping[str, Any]) -> int:
    """The entry's position in its chain; before chains existed it was the id."""
    seq = entry.get("seq")
    return int(entry["id"] if seq is None else seq)


def _canonical_fast(entry: Mapping[str, Any]) -> str | None:
    """``_canonical``'s exact text, assembled directly for the usual types (int id and seq, text fields); None
    for anything else. Keys in sorted order, strings escaped by the json module's own ASCII encoder."""
    ident, actor, action, device_id, detail = (entry["id"], entry["actor"], entry["action"], entry["device_id"],
                                               entry["detail"])
    if not (type(ident) is int and type(actor) is str and type(action) is str and type(detail) is str
            and (device_id is None or type(device_id) is str)):
        return None
    text = _json_str
    chain = entry.get("chain") or ""
    head = (f'{{"action":{text(action)},"actor":{text(actor)},"at":{text(repr(float(entry["at"])))},')
    tail = f'"detail":{text(detail)},"device_id":{"null" if device_id is None else text(device_id)},'
    if not chain:
        return f'{head}{tail}"id":{int.__repr__(ident)}}}'
    seq = entry["seq"]
    if type(chain) is not str or type(seq) is not int:
        return None
    return f'{head}"chain":{text(chain)},{tail}"id":{int.__repr__(ident)},"seq":{int.__repr__(seq)}}}'


def _canonical(entry: Mapping[str, Any]) -> str:
    body = {
        "id": entry["id"],
        "at": repr(float(entry["at"])),
        "actor": entry["actor"],
        "action": entry["action"],
        "device_id": entry["device_id"],
        "detail": entry["detail"],
    }
    if entry.get("chain"):
        body["chain"], body["seq"] = entry["chain"], entry["seq"]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def seal(key: bytes, last: int, head: str, chain: str = HUB_CHAIN) -> str:
    """The keyed seal of a chain's head (hex HMAC-SHA-256): ``last`` is the last entry's id on the hub chain,
    its seq on a worker chain; 0 and ``GENESIS`` for no entries."""
    body = f"{int(last)}:{head}" if not chain else f"{chain}\x00{int(last)}:{head}"
    return hmac.new(key, b"attest-hub audit seal\x00" + body.encode(), hashlib.sha256).hexdigest()


def state_keys(chain: str) -> tuple[str, str]:
    """The hub_state keys of a chain's head and seal."""
    return ("audit_head", "audit_seal") if not chain else (f"audit_head:{chain}", f"audit_seal:{chain}")


class AuditKeyMissing(RuntimeError):
    """A store opened without the hub's audit key was asked to append (open it with ``open_store``)."""


def append(store: Store, conn: Connection, drafts: Sequence[AuditDraft], chain: str = HUB_CHAIN) -> None:
    """Append entries to ``chain``, linked, within the caller's transaction, and reseal its head.

    Locks only that chain's head row (PostgreSQL ``FOR UPDATE``; SQLite holds the write lock anyway). Raises
    ``AuditKeyMissing`` if ``store`` was not opened with the audit key (``hub.crypto.hubstate.open_store``)."""
    if not drafts:
        return
    if not store.audit_key:
        raise AuditKeyMissing("this store was opened without the hub's audit key; open it with "
                              "hub.crypto.hubstate.open_store(settings)")
    head_key, seal_key = state_keys(chain)
    prev, created = store.lock_audit_chain(conn, chain)
    if created and chain:  # a new worker chain: the hub chain names it, so deleting it whole is detected
        append(store, conn, [AuditDraft(drafts[0].at, "hub", CHAIN_OPENED, None, {"chain": chain})])
    ids, seq = store.audit_next(conn, chain, len(drafts))
    rows = []
    for ident, draft in zip(ids, drafts, strict=True):
        seq += 1
        row: dict[str, Any] = {
            "id": ident,
            "at": draft.at,
            "actor": draft.actor,
            "action": draft.action,
            "device_id": draft.device_id,
            "detail": _DETAIL_JSON.encode(dict(draft.detail)),
            "chain": chain,
            "seq": seq,
            "prev_hash": prev,
        }
        row["entry_hash"] = prev = entry_hash(row["prev_hash"], row)
        rows.append(row)
    store.insert_audit(conn, rows)
    store.set_state(conn, head_key, prev)
    store.set_state(conn, seal_key, seal(store.audit_key, rows[-1]["id" if not chain else "seq"], prev, chain))


def by_chain(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Entries grouped by chain, each chain in the order given (the hub chain first when present)."""
    chains: dict[str, list[Mapping[str, Any]]] = {HUB_CHAIN: []}
    for row in rows:
        chains.setdefault(chain_of(row), []).append(row)
    if not chains[HUB_CHAIN]:
        del chains[HUB_CHAIN]
    return chains


def verify_chain(rows: Iterable[Mapping[str, Any]], start_hash: str = GENESIS, head: str | None = None,
                 start_seq: int | None = None) -> list[str]:
    """Problems found in a run of entries of one chain (empty when intact): consecutive ``seq`` (from
    ``start_seq`` + 1 when given), each entry's hash, each link from ``start_hash``, and the ``head``."""
    problems: list[str] = []
    prev = start_hash
    expected = None if start_seq is None else start_seq + 1
    for row in rows:
        seq = seq_of(row)
        if expected is not None and seq != expected:
            what = "seq" if row.get("seq") is not None else "id"
            problems.append(f"{_where(row)}: expected {what} {expected} (an entry was removed or reordered)")
        if row["prev_hash"] != prev:
            problems.append(f"{_where(row)}: prev_hash does not match the previous entry")
        if entry_hash(row["prev_hash"], row) != row["entry_hash"]:
            problems.append(f"{_where(row)}: content does not match its hash (edited)")
        prev = row["entry_hash"]
        expected = seq + 1
    if head is not None and prev != head:
        problems.append("the last entry is not the recorded head (entries were removed from the end)")
    return problems


def verify_export(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Problems in an exported run of the log (``attest-hub audit verify --file``): every chain in it is
    checked from its first entry's ``prev_hash``; an export from before chains existed is one chain by id."""
    problems: list[str] = []
    for entries in by_chain(rows).values():
        problems += verify_chain(entries, str(entries[0]["prev_hash"]), None, seq_of(entries[0]) - 1)
    return problems


@dataclass(frozen=True, slots=True)
class ChainState:
    """What the database records of one chain besides its entries: head and seal (None: missing), and where
    the chain starts after a prune (the signed checkpoint's last pruned seq and hash; 0 and GENESIS: none).
    ``vouched``: the signed checkpoint names the chain (its ``chain-opened`` entry may be pruned)."""

    head: str | None
    sealed: str | None
    start_seq: int = 0
    start_hash: str = GENESIS
    vouched: bool = False


def verify_log(rows: Sequence[Mapping[str, Any]], chains: Mapping[str, ChainState], key: bytes,
               checkpoint: tuple[int, str] | None = None,
               chain_checkpoints: Mapping[str, tuple[int, str]] | None = None) -> list[str]:
    """Problems in the database's whole log (``attest-hub audit verify``; empty when intact): every chain's
    links and ``seq`` from its start, its recorded head and keyed seal; every worker chain must have been
    opened on the hub chain (or be named by the signed prune checkpoint) and still hold entries; and
    ``checkpoint`` ((id, entry_hash) of the hub chain, recorded outside the database) must still be in the
    hub chain unless it was pruned; likewise each worker chain's (seq, entry_hash) in ``chain_checkpoints``
    (the generation record's ``chains``), which catches a chain's tail removed with an older head and seal put
    back. ``chains``: each chain's state in the database (``Store.audit_chains``, with the prune checkpoint's
    starts)."""
    grouped = by_chain(rows)
    problems: list[str] = []
    hub = sorted(grouped.get(HUB_CHAIN, []), key=seq_of)
    opened = {_opened_chain(r["detail"]) for r in hub if r["action"] == CHAIN_OPENED}
    names = sorted(set(grouped) | set(chains) | opened, key=lambda c: (c != HUB_CHAIN, c))
    for name in names:
        entries = hub if not name else sorted(grouped.get(name, []), key=seq_of)
        state = chains.get(name, ChainState(None, None))
        label = f" of chain {name}" if name else ""
        if name and name not in opened and not state.vouched:
            problems.append(f"chain {name} was never opened on the hub chain (an entry was removed from the hub "
                            "chain, or the chain was made up)")
        if name and not entries:
            problems.append(f"chain {name} has no entries left: they were removed")
        problems += verify_chain(entries, state.start_hash, None, state.start_seq)
        last = entries[-1] if entries else None
        last_hash = str(last["entry_hash"]) if last else state.start_hash
        if state.head is None:
            if entries:
                problems.append(f"the recorded head of the chain{label} is missing")
        elif last_hash != state.head:
            problems.append(f"the last entry{label} is not the recorded head (entries were removed from the end)")
        position = 0 if last is None else int(last["seq"] if name else last["id"])
        if state.sealed is None:
            if entries:
                problems.append(f"the head of the chain{label} is not sealed (the seal was removed)")
        elif not hmac.compare_digest(state.sealed, seal(key, position, last_hash if last else GENESIS, name)):
            problems.append(f"the seal{label} does not match the last entry: the chain was recomputed or entries "
                            "were removed from the end")
        mark = (chain_checkpoints or {}).get(name) if name else None
        if mark is not None and mark[0] > state.start_seq:
            problems += _outside_mark(entries, "seq", mark, f"the entry at seq {mark[0]}{label}")
    first_id = int(hub[0]["id"]) if hub else 1
    if checkpoint is not None and checkpoint[0] >= first_id:
        problems += _outside_mark(hub, "id", checkpoint, f"entry id {checkpoint[0]}")
    return problems


def _outside_mark(entries: Sequence[Mapping[str, Any]], column: str, mark: tuple[int, str], name: str) -> list[str]:
    """Problems with one entry recorded outside the database (its ``column`` value and hash): gone, or other."""
    at = next((r for r in entries if int(r[column]) == mark[0]), None)
    if at is None:
        return [f"{name}, recorded outside the database, is gone: entries were removed from the end (or the "
                "database was rolled back)"]
    if not hmac.compare_digest(str(at["entry_hash"]), mark[1]):
        return [f"{_where(at)} differs from the hash recorded outside the database: the chain was rewritten up to it"]
    return []


def _where(row: Mapping[str, Any]) -> str:
    """How a message names an entry: its id (the column to look it up by) and, in a worker chain, its place."""
    chain = chain_of(row)
    return f"entry id {row['id']} (chain {chain} seq {row['seq']})" if chain else f"entry id {row['id']}"


def _opened_chain(detail: object) -> str:
    try:
        body = json.loads(str(detail))
    except ValueError:
        return HUB_CHAIN
    return str(body.get("chain") or HUB_CHAIN) if isinstance(body, dict) else HUB_CHAIN
