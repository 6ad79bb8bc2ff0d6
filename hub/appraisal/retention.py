"""Retention: verdicts, audit entries and rejection counts older than a cut-off are exported, then pruned.

``prune`` runs from ``attest-hub db prune`` and, every ``retention_interval_s``, in the leader worker. It
works in chunks of ``chunk`` rows, each in a short transaction, so the hot path waits at most one chunk:

1. the rows are read and written to JSON Lines files in the archive folder (fsync'd, then renamed into
   place), so nothing is deleted that is not on disk;
2. in one transaction the rows are deleted; for audit entries the pruned prefix of every chain is summed
   up in a checkpoint signed with the hub key (COSE_Sign1, RFC 9052 §4.2): per chain the seq and
   ``entry_hash`` of its last pruned entry, the running count and the export file's SHA-256, and an
   ``audit-pruned`` entry is appended to the hub chain. A worker chain keeps its newest entry (its next
   entry continues from it). ``chain_starts`` starts each chain at the checkpoint, so ``attest-hub audit
   verify`` still proves the rest intact, and the exported files verify on their own
   (``attest-hub audit verify --file``: each chain's first ``prev_hash`` in a file is its last hash in the
   one before).

Audit export lines are the format of ``attest-hub audit export`` (``AUDIT_FIELDS``). Kept whatever their
age: each device's latest appraised verdict (what-if and reports read it) and verdicts of signed but
malformed evidence (their dedup keys are what stops a replay of it; docs/SECURITY.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
from sqlalchemy import Connection, func, select

from hub.audit import GENESIS, HUB_CHAIN, AuditDraft, append, by_chain, seq_of
from hub.crypto.cose import CoseError, decode_sign1, sign1, verify_sign1
from hub.crypto.hubkeys import HubKeys
from hub.crypto.keys import PublicKey
from hub.store.db import AUDIT, VERDICTS, Store
from hub.store.rejections import REJECTIONS

AUDIT_FIELDS = ("id", "at", "actor", "action", "device_id", "detail", "chain", "seq", "prev_hash", "entry_hash")
"""One exported audit line (``attest-hub audit export``)."""
CHECKPOINT_KEY = "audit_checkpoint"
ACTOR = "retention"


class RetentionError(RuntimeError):
    """The archive cannot be written or a stored checkpoint cannot be read."""


class ArchiveError(RetentionError):
    """The archive folder cannot be created or one of its files cannot be written; names the path and why."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The pruned prefix of the audit log: of the hub chain its entries seq 1..``through`` and the last one's
    hash; of each worker chain in ``chains`` (seq, hash) likewise ((0, GENESIS): none pruned yet, but the
    chain existed); ``entries`` pruned in all. A checkpoint from before chains has no ``chains``."""

    through: int
    hash: str
    entries: int
    at: int
    file: str
    file_sha256: str
    chains: dict[str, tuple[int, str]] = field(default_factory=dict)

    def payload(self) -> bytes:
        body: dict[str, Any] = {"through": self.through, "hash": self.hash, "entries": self.entries, "at": self.at,
                                "file": self.file, "sha256": self.file_sha256}
        if self.chains:
            body["chains"] = {name: [seq, digest] for name, (seq, digest) in sorted(self.chains.items())}
        return cbor2.dumps(body)

    def starts(self) -> dict[str, tuple[int, str]]:
        """Where each chain continues: chain -> (last pruned seq, its entry_hash)."""
        return {HUB_CHAIN: (self.through, self.hash), **self.chains}


@dataclass(slots=True)
class PruneResult:
    cutoff: float
    verdicts: int = 0
    audit: int = 0
    rejection_counts: int = 0
    files: list[str] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    more: bool = False
    """Rows older than the cut-off remain (``max_chunks`` reached)."""


def prune(store: Store, keys: HubKeys, archive: Path, cutoff: float, *, chunk: int = 5000,
          max_chunks: int = 1_000_000, now: float | None = None) -> PruneResult:
    """Export and delete what is older than ``cutoff`` (Unix seconds). Raises ``StoreError`` (database) or
    ``RetentionError`` (``ArchiveError``: the archive cannot be written); what was deleted before the error
    stays exported and checkpointed."""
    try:
        archive.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArchiveError(f"cannot create the archive folder {archive}: {_reason(exc)}") from exc
    result = PruneResult(cutoff)
    budget = max_chunks
    budget -= _prune_verdicts(store, archive, cutoff, chunk, budget, result)
    budget -= _prune_rejections(store, archive, cutoff, budget, result)
    _prune_audit(store, keys, archive, cutoff, chunk, budget, result, time.time() if now is None else now)
    return result


def _prune_verdicts(store: Store, archive: Path, cutoff: float, chunk: int, budget: int,
                    result: PruneResult) -> int:
    with store.reading() as conn:
        keep = _kept_verdicts(conn)
    after, used = 0, 0
    while used < budget:
        with store.reading() as conn:
            rows = [dict(r._mapping) for r in conn.execute(
                select(VERDICTS).where(VERDICTS.c.id > after, VERDICTS.c.received_at < cutoff)
                .order_by(VERDICTS.c.id).limit(chunk))]
        if not rows:
            return used
        used += 1
        after = int(rows[-1]["id"])
        gone = [r for r in rows if r["id"] not in keep and not str(r["dedup_key"]).startswith("signed:")]
        if not gone:
            continue
        name = f"verdicts-{gone[0]['id']:012d}-{gone[-1]['id']:012d}.jsonl"
        _write(archive / name, (_verdict_line(r) for r in gone))
        with store.transaction() as conn:
            conn.execute(VERDICTS.delete().where(VERDICTS.c.id.in_([r["id"] for r in gone])))
        result.verdicts += len(gone)
        result.files.append(name)
    result.more = True
    return used


def _kept_verdicts(conn: Connection) -> set[int]:
    """Each device's latest authenticated, appraised verdict."""
    query = (select(func.max(VERDICTS.c.id)).where(VERDICTS.c.authenticated.is_(True), VERDICTS.c.status != "rejected")
             .group_by(VERDICTS.c.device_id))
    return {int(i) for (i,) in conn.execute(query)}


def _prune_rejections(store: Store, archive: Path, cutoff: float, budget: int, result: PruneResult) -> int:
    if budget <= 0:
        result.more = True
        return 0
    minute = int(cutoff // 60)
    with store.reading() as conn:
        rows = [dict(r._mapping) for r in conn.execute(
            select(REJECTIONS).where(REJECTIONS.c.minute < minute)
            .order_by(REJECTIONS.c.minute, REJECTIONS.c.device_id))]
    if not rows:
        return 1
    name = f"rejections-{rows[0]['minute']}-{rows[-1]['minute']}.jsonl"
    _write(archive / name, (json.dumps(r, sort_keys=True) for r in rows))
    with store.transaction() as conn:
        conn.execute(REJECTIONS.delete().where(REJECTIONS.c.minute <= rows[-1]["minute"]))
    result.rejection_counts += len(rows)
    result.files.append(name)
    return 1


def _prune_audit(store: Store, keys: HubKeys, archive: Path, cutoff: float, chunk: int, budget: int,
                 result: PruneResult, now: float) -> None:
    """The prefix of the log older than ``cutoff`` (entries up to the first one that is not), among the
    entries that existed when it started (not the ``audit-pruned`` entries it appends itself). Ids order the
    entries of every chain, so this is a prefix of each chain; a worker chain's newest entry stays."""
    with store.reading() as conn:
        newest = int(conn.execute(select(func.coalesce(func.max(AUDIT.c.id), 0))).scalar_one())
        kept = [i for i in (conn.execute(select(AUDIT.c.id).where(AUDIT.c.chain == chain).order_by(AUDIT.c.seq.desc())
                                         .limit(1)).scalar() for chain in store.audit_chains(conn) if chain)
                if i is not None]  # each worker chain's newest entry (index lookups): its next one follows it
    for _ in range(max(budget, 0)):
        with store.reading() as conn:
            boundary = conn.execute(select(func.min(AUDIT.c.id)).where(AUDIT.c.at >= cutoff)).scalar()
            query = select(*[AUDIT.c[n] for n in AUDIT_FIELDS]).where(
                AUDIT.c.at < cutoff, AUDIT.c.id <= newest, AUDIT.c.id.not_in(kept))
            if boundary is not None:
                query = query.where(AUDIT.c.id < boundary)
            rows = [dict(r._mapping) for r in conn.execute(query.order_by(AUDIT.c.id).limit(chunk))]
            previous = read_checkpoint(store, conn, keys.public_key)
            existing = store.audit_chains(conn)
        if not rows:
            return
        name = f"audit-{rows[0]['id']:012d}-{rows[-1]['id']:012d}.jsonl"
        digest = _write(archive / name, (json.dumps({k: r[k] for k in AUDIT_FIELDS}, sort_keys=True) for r in rows))
        starts = previous.starts() if previous else {HUB_CHAIN: (0, GENESIS)}
        starts.update({chain: (0, GENESIS) for chain in existing if chain and chain not in starts})
        for chain, entries in by_chain(rows).items():
            starts[chain] = (seq_of(entries[-1]), str(entries[-1]["entry_hash"]))
        hub_seq, hub_hash = starts.pop(HUB_CHAIN)
        checkpoint = Checkpoint(hub_seq, hub_hash, (previous.entries if previous else 0) + len(rows), int(now),
                                name, digest, starts)
        exported = [int(r["id"]) for r in rows]
        with store.transaction() as conn:
            store.lock_audit_head(conn)  # serialises with every writer of the hub chain
            ids = {int(i) for (i,) in conn.execute(select(AUDIT.c.id).where(AUDIT.c.id.in_(exported)))}
            if ids != set(exported):
                raise RetentionError("the audit entries changed while being exported; nothing of them was pruned")
            append(store, conn, [AuditDraft(now, ACTOR, "audit-pruned", None, {
                "through": checkpoint.through, "hash": checkpoint.hash, "entries": checkpoint.entries,
                "file": name, "sha256": digest, "cutoff": cutoff, "verdicts": result.verdicts,
                **({"chains": {c: list(v) for c, v in sorted(starts.items())}} if starts else {})})])
            conn.execute(AUDIT.delete().where(AUDIT.c.id.in_(exported)))
            signed = sign1(checkpoint.payload(), keys.signing_key, kid=keys.kid)
            store.set_state(conn, CHECKPOINT_KEY, base64.b64encode(signed).decode())
        result.audit += len(rows)
        result.files.append(name)
        result.checkpoint = checkpoint
    result.more = True


def read_checkpoint(store: Store, conn: Connection, public_key: PublicKey) -> Checkpoint | None:
    """The stored checkpoint, its hub signature checked; None if nothing was ever pruned. Raises
    ``RetentionError`` if it is there but not signed by ``public_key`` or not well formed."""
    text = store.get_state(conn, CHECKPOINT_KEY)
    if text is None:
        return None
    try:
        message = decode_sign1(base64.b64decode(text, validate=True), max_bytes=65536)
        verify_sign1(message, public_key)
        body = cbor2.loads(message.payload)
        chains = {str(name): (int(seq), str(digest)) for name, (seq, digest) in dict(body.get("chains", {})).items()}
        return Checkpoint(int(body["through"]), str(body["hash"]), int(body["entries"]), int(body["at"]),
                          str(body["file"]), str(body["sha256"]), chains)
    except (CoseError, ValueError, TypeError, KeyError, AttributeError, cbor2.CBORDecodeError) as exc:
        raise RetentionError(f"the audit checkpoint is not valid: {exc}") from exc


def chain_starts(store: Store, conn: Connection, public_key: PublicKey | None,
                 rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, tuple[int, str]], list[str]]:
    """Where ``hub.audit.verify_log`` starts each chain of the stored ``rows``: chain -> (seq, hash) of the
    signed checkpoint of a prune (a chain it does not name starts at 0 and GENESIS); with the problems found
    (a missing, unsigned or mismatched checkpoint, a chain that starts elsewhere, or no hub key to check
    the checkpoint with)."""
    if public_key is None and store.get_state(conn, CHECKPOINT_KEY) is not None:
        return {}, ["the chain was pruned and its checkpoint cannot be checked without the hub key"]
    try:
        checkpoint = None if public_key is None else read_checkpoint(store, conn, public_key)
    except RetentionError as exc:
        return {}, [str(exc)]
    starts = checkpoint.starts() if checkpoint is not None else {}
    problems = []
    for chain, entries in by_chain(rows).items():
        first = min(seq_of(r) for r in entries)
        label = f"chain {chain}" if chain else "the chain"
        if chain not in starts:
            if first != 1:
                problems.append(f"{label} starts at entry {first} and no signed checkpoint covers the entries "
                                "before")
        elif first != starts[chain][0] + 1:
            problems.append(f"{label} starts at entry {first}; the signed checkpoint ends at entry "
                            f"{starts[chain][0]}")
    return starts, problems


def _verdict_line(row: Mapping[str, Any]) -> str:
    out = dict(row)
    out["evidence"] = base64.b64encode(bytes(row["evidence"] or b"")).decode()
    out["evidence_sha256"] = bytes(row["evidence_sha256"]).hex() if row.get("evidence_sha256") else None
    return json.dumps(out, sort_keys=True)


def check_archive(archive: Path) -> None:
    """Create the archive folder if it is missing and write (then remove) a file in it: what ``prune`` will
    need, checked up front (``serve`` at start). Raises ``ArchiveError`` naming the path and the reason."""
    try:
        archive.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArchiveError(f"cannot create the archive folder {archive}: {_reason(exc)}") from exc
    try:
        with tempfile.TemporaryFile(dir=archive, prefix=".probe-"):
            pass
    except OSError as exc:
        raise ArchiveError(f"cannot write in the archive folder {archive}: {_reason(exc)}") from exc


def _reason(exc: OSError) -> str:
    reason = exc.strerror or type(exc).__name__
    return reason[:1].lower() + reason[1:]


def _write(path: Path, lines: Iterable[str]) -> str:
    """Write ``lines`` to ``path`` durably (temporary file, fsync, rename); the file's SHA-256 (hex)."""
    data = "".join(line + "\n" for line in lines).encode()
    temporary = path.with_suffix(path.suffix + ".part")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        raise ArchiveError(f"cannot write {path}: {_reason(exc)}") from exc
    return hashlib.sha256(data).hexdigest()
