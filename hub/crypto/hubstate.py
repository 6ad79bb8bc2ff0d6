"""The hub's state outside its database: opening the store, the generation record, restore acceptance, the lock.

A database copied back from a backup lowers every device's (bootcount, seq)
high-water mark and the epoch, which would let captured evidence be accepted
again. So the hub keeps a monotonic *generation*: a counter in the database
(``hub_state.generation``) and, written after each step commits, in the state
directory (``generation.json``, owner-only), together with the last epoch
issued and the audit chain's last id and head. The leader steps it at start,
at every epoch advance, every ``generation_period_s`` and at a clean stop, and
publishes each step signed and retained on ``hub/generation``
(hub/server/announced.py). A database whose generation is behind the state
directory's (or, for ``serve``, behind the retained checkpoints) was restored
or rolled back: every command and ``serve`` refuse it with one line naming
the procedure, ``attest-hub db accept-restore``, which rotates the nonce
secret (every nonce issued before is then refused), moves the epoch past any
value issued, steps the generation past every one recorded or published and
records the event, with the audit entries lost with the restore, in the
audit log. A backup taken less than one ``generation_period_s`` before a
crash is not detected. ``serve`` and ``accept-restore`` hold the state
directory's lock (:class:`StateLock`). docs/OPERATIONS.md ("Restoring the
database") and docs/SECURITY.md (row 32) describe it.

The schema itself is created only by :func:`init_hub` (``attest-hub init``)
and by ``attest-hub db upgrade``: an empty database is never taken for a new
hub when the state directory already belongs to one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select

from hub.audit import GENESIS, HUB_CHAIN, AuditDraft, append, seal
from hub.config import Settings
from hub.crypto.hubkeys import HubKeyError, init_state, owner_only, read_secret, write_secret
from hub.store import Store, StoreError
from hub.store.db import AUDIT, SchemaError
from hub.store.migrate import schema_state, upgrade
from hub.store.wal import WalFiles, adopt, foreign_wal, new_mark, sqlite_files, stamp

log = logging.getLogger(__name__)

RESTORE_DOC = 'docs/OPERATIONS.md, "Restoring the database"'


class RollbackError(StoreError):
    """The database is behind the generation recorded in the state directory (restored or rolled back)."""


class NothingToAccept(StoreError):
    """``accept-restore`` on a database that is not behind any generation or epoch recorded or published."""


class StateLocked(StoreError):
    """Another process holds the state directory's lock: a hub is serving on it, or a restore is accepted."""


class StaleWal(StoreError):
    """A SQLite write-ahead log beside the database that does not belong to it (left by a crashed hub beside a
    database restored from a backup): the hub does not open the two together."""


@dataclass(frozen=True, slots=True)
class WalRecovered:
    """A crash recovery: a SQLite WAL left by a hub that did not stop cleanly, found to belong to its database
    (``check_wal``) and checkpointed into it (SQLite replays it; nothing in it is lost)."""

    database: Path
    wal_bytes: int  # the WAL's size when it was found, header included

    def describe(self) -> str:
        return (f"crash recovery: database {self.database} had the write-ahead log {self.database.name}-wal "
                f"({self.wal_bytes} bytes) of a hub that did not stop cleanly beside it; it belongs to the file "
                "(mark and integrity_check) and was applied and checkpointed")

    def draft(self, at: float) -> AuditDraft:
        """The hub chain's ``wal-recovered`` entry: ``{database, wal_bytes}`` (bytes)."""
        return AuditDraft(at, "hub", WAL_RECOVERED, None, {"database": str(self.database),
                                                           "wal_bytes": self.wal_bytes})


WAL_RECOVERED = "wal-recovered"
"""The audit action of a crash recovery (:class:`WalRecovered`)."""


class StateLock:
    """An exclusive ``flock`` on ``state_dir/hub.lock``, held by ``serve`` for its lifetime and by ``db
    accept-restore``: one hub per state directory, and no restore accepted under a running hub. The kernel
    releases it when the holder's process ends, however it ends (SIGKILL too). The file holds the holder's
    pid and command, for the refusal message. Raises ``StateLocked`` if held, ``StoreError`` on I/O errors."""

    def __init__(self, settings: Settings, command: str) -> None:
        self.path = settings.state_dir / "hub.lock"
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        try:
            with owner_only():
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open the lock file {self.path}: {exc.strerror or exc}") from exc
        for attempt in range(10):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                holder = os.pread(fd, 200, 0).decode(errors="replace").split()
                if (holder and _alive(holder[0])) or attempt == 9:  # else maybe a moment's probe (``held``): retry
                    os.close(fd)
                    who = f"`attest-hub {' '.join(holder[1:])}` (pid {holder[0]})" if holder else "another process"
                    raise StateLocked(f"the state dir {self.path.parent} is in use by {who}: stop it first (one "
                                      "hub per state dir)") from exc
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.command}\n".encode())
        self._fd = fd
        return self

    @staticmethod
    def held(settings: Settings) -> bool:
        """Whether another process holds the lock now: a shared ``flock`` tried and dropped at once (``acquire``
        retries briefly past such a probe). Never creates the file."""
        try:
            fd = os.open(settings.state_dir / "hub.lock", os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing drops the probe's lock
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _alive(pid: str) -> bool:
    """Whether the process named in the lock file lives (a holder killed by SIGKILL leaves its pid there)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError):
        return True  # not ours to signal, or unreadable: take it as alive
    return True


@dataclass(frozen=True, slots=True)
class Generation:
    """What the state directory records at each generation step."""

    generation: int
    epoch: int  # the highest epoch issued so far
    audit_id: int  # the hub audit chain's last entry id and hash (0 and GENESIS: none)
    audit_head: str
    chains: tuple[tuple[str, int, str], ...] = ()
    """Each worker audit chain's (name, last seq, head): a chain's tail removed with an older head and seal put
    back (they are in the database too) no longer contains this entry (hub/audit.py ``verify_log``)."""

    def chain_marks(self) -> dict[str, tuple[int, str]]:
        return {name: (seq, head) for name, seq, head in self.chains}

    def as_json(self) -> dict[str, object]:
        return {"generation": self.generation, "epoch": self.epoch, "audit_id": self.audit_id,
                "audit_head": self.audit_head, "chains": {name: [seq, head] for name, seq, head in self.chains}}


def read_generation(settings: Settings) -> Generation | None:
    """The state directory's record, or None if it has none. Raises ``StoreError`` if it is unreadable."""
    path = settings.generation_path
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        chains = tuple(sorted((str(name), int(mark[0]), str(mark[1]))
                              for name, mark in dict(data.get("chains") or {}).items()))
        return Generation(int(data["generation"]), int(data["epoch"]), int(data["audit_id"]),
                          str(data["audit_head"]), chains)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise StoreError(f"{path} is unreadable ({exc}): restore it, or the state directory, from a backup") from exc


def write_generation(settings: Settings, record: Generation) -> None:
    """Record ``record`` unless the file already holds a later generation (another process wrote it)."""
    current = read_generation(settings)
    if current is not None and current.generation > record.generation:
        return
    with owner_only():
        write_secret(settings.generation_path, (json.dumps(record.as_json(), sort_keys=True) + "\n").encode())


def _snapshot(store: Store, conn: Connection) -> Generation:
    """The database's generation, epoch and audit head, read with the audit head locked (consistent)."""
    head = store.lock_audit_head(conn)
    last_id = int(conn.execute(select(func.coalesce(func.max(AUDIT.c.id), 0)).where(AUDIT.c.chain == HUB_CHAIN))
                  .scalar_one())  # the hub chain's: worker chains are vouched for by their seals (SECURITY.md)
    chains = []
    for name in sorted(set(store.audit_chains(conn)) | {HUB_CHAIN}):
        # each chain's last entry (the hub chain's too, by seq, for counting losses), read in one indexed
        # statement ((chain, seq) is unique), so its seq and hash agree without locking the chain
        last = conn.execute(select(AUDIT.c.seq, AUDIT.c.entry_hash).where(AUDIT.c.chain == name)
                            .order_by(AUDIT.c.seq.desc()).limit(1)).first()
        if last is not None:
            chains.append((name, int(last[0]), str(last[1])))
    return Generation(int(store.get_state(conn, "generation") or 0), int(store.get_state(conn, "epoch") or 0),
                      last_id, head if last_id else GENESIS, tuple(chains))


def open_store(settings: Settings, *, max_pages: int = 0, check_generation: bool = True,
               locked: bool = False) -> Store:
    """The hub's store, with the audit key, checked: a leftover SQLite WAL belongs to the database
    (``check_wal``; ``locked``: the caller holds :class:`StateLock`), schema at head (no DDL), not behind the
    generation.

    Raises ``StoreError`` (``StaleWal``, ``SchemaError``, ``RollbackError``) with a one-line message, or
    ``HubKeyError``; a state directory that does not exist (with the default SQLite database in it) is a
    StoreError that says how to create one, not SQLite's "unable to open database file".

    A crash recovery (``check_wal`` adopted a WAL) is appended to the audit log (``wal-recovered``) once the
    database has passed these checks; without ``check_generation`` (a database that may be a restore, before
    ``db accept-restore``) it is only logged."""
    if not settings.database_url and not settings.state_dir.is_dir():
        raise StoreError(missing_state_dir_message(settings))
    recovered = check_wal(settings, locked=locked)
    try:
        store = Store(settings.effective_database_url, max_pages=max_pages)
    except SchemaError as exc:
        if exc.kind == "empty" and settings.hub_key_path.exists():
            raise SchemaError("empty", empty_database_message(settings)) from exc
        raise
    try:
        store.audit_key = read_secret(settings.audit_key_path, "audit key")
        if check_generation:
            check_generation_of(settings, store)
            if recovered is not None:
                _append_recovery(store, recovered)
        elif recovered is not None:
            log.warning("the crash recovery of %s is not in the audit log: the database is not checked against "
                        "the generation here", recovered.database)
    except BaseException:
        store.close()
        raise
    return store


def _append_recovery(store: Store, recovered: WalRecovered) -> None:
    with store.transaction() as conn:
        append(store, conn, [recovered.draft(time.time())])


def record_recovery(settings: Settings, recovered: WalRecovered | None) -> None:
    """Append a crash recovery found by a command that opens the database its own way (``init``, ``db
    upgrade``, ``db current``) through a store opened as the hub opens it. A database that cannot take it yet
    (schema behind this release, behind the generation) gets no entry; the log says why."""
    if recovered is None:
        return
    try:
        store = open_store(settings)
    except (StoreError, HubKeyError) as exc:
        log.warning("the crash recovery of %s is not in the audit log: %s", recovered.database, exc)
        return
    try:
        _append_recovery(store, recovered)
    finally:
        store.close()


def missing_state_dir_message(settings: Settings) -> str:
    """One line for a state directory that is not a directory: it does not exist, or something else is there."""
    where = settings.state_dir
    what = "is not a directory" if where.exists() else "does not exist"
    return (f"state dir {where} {what}: run `attest-hub --state-dir {where} init` to create a hub there, "
            "or give the state dir of an existing hub (--state-dir or ATTEST_HUB_STATE_DIR)")


def state_dir_problem(settings: Settings) -> str | None:
    """Why the state directory cannot be a serving hub's, or None: it is missing or not a directory, this user
    cannot read and write it (``serve`` writes its lock, the generation record and the database mark there), or
    it holds no hub (neither the hub's signing key nor its generation record: ``init`` was never run there).
    Checked before anything else, so a wrong ``--state-dir`` is reported as such, not as a missing key file."""
    where = settings.state_dir
    if not where.is_dir():
        return missing_state_dir_message(settings)
    if not os.access(where, os.R_OK | os.W_OK | os.X_OK):
        return (f"state dir {where} is not readable and writable by this user (uid {os.geteuid()}): run the hub as "
                "the user that owns it, or give it to that user")
    if not settings.hub_key_path.exists() and not settings.generation_path.exists():
        return (f"state dir {where} holds no hub (no {settings.hub_key_path.name}, no "
                f"{settings.generation_path.name}): run `attest-hub --state-dir {where} init` to create one there, "
                "or give the state dir of an existing hub (--state-dir or ATTEST_HUB_STATE_DIR)")
    return None


def marks_path(settings: Settings) -> Path:
    """``state_dir/db-mark.json``: the marks the SQLite database file's header may hold (hub/store/wal.py)."""
    return settings.state_dir / "db-mark.json"


def read_marks(settings: Settings) -> tuple[int, ...] | None:
    """The recorded marks, newest last, or None if none was recorded (a hub that never served, PostgreSQL)."""
    path = marks_path(settings)
    try:
        data = json.loads(path.read_text())
        return tuple(int(m) for m in data["marks"]) or None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{path} is unreadable ({exc}): delete it (the next `attest-hub serve` writes it "
                         "again)") from exc


def check_wal(settings: Settings, *, locked: bool = False) -> WalRecovered | None:
    """Refuse (``StaleWal``) a SQLite WAL left beside the database that does not belong to it; adopt (checkpoint)
    one that does and return the crash recovery, logged once as a warning (the caller records it in the audit
    log: ``open_store``, ``record_recovery``); None when there was nothing to recover. A WAL is left only by a hub
    that did not stop cleanly: while another process holds the state directory's lock (``serve``) the WAL is that
    hub's live one and is not looked at, unless ``locked`` (the caller holds the lock itself); nor is one that a
    live connection has open (``WalFiles.in_use``: ``attest-hub api``, another command), which passed this check
    when it opened the database, and which no crash left. Nothing is written
    before the verdict: the check reads the database through a read-only connection (hub/store/wal.py
    ``foreign_wal``), which can neither checkpoint nor delete the WAL. A checkpoint that a live connection kept
    from completing is no recovery yet: the next opening checks the WAL again."""
    files = sqlite_files(settings.effective_database_url)
    size = files.leftover() if files is not None else 0
    if files is None or not size or (not locked and StateLock.held(settings)) or files.in_use():
        return None
    try:
        problem = foreign_wal(files, read_marks(settings))
    except sqlite3.Error as exc:
        raise StoreError(f"cannot check the write-ahead log {files.wal}: {exc}") from exc
    if problem is not None:
        raise StaleWal(stale_wal_message(files, problem))
    try:
        done = adopt(files)
    except sqlite3.Error as exc:  # left for the next opening to check again; opening the store reports real faults
        log.warning("the write-ahead log %s was not checkpointed: %s", files.wal, exc)
        return None
    if not done:
        log.warning("the write-ahead log %s belongs to the database but a live connection kept it from being "
                    "checkpointed; it is checked again next time", files.wal)
        return None
    recovered = WalRecovered(files.database, size)
    log.warning("%s", recovered.describe())
    return recovered


def stale_wal_message(files: WalFiles, problem: str) -> str:
    """One line: what is wrong (``problem`` says why, SQLite's own words at most once), then the remedy."""
    return (f"database {files.database}: a restored database with a stale write-ahead log: {files.wal.name} "
            f"beside it does not belong to it ({problem}) and SQLite would apply it, so the hub will not open the "
            f"two. Move {files.wal.name} and {files.shm.name} aside (keep them), then run `attest-hub db "
            f"accept-restore`; if it finds nothing to accept, the backup is from the last generation period and "
            f"what the hub accepted after it is lost ({RESTORE_DOC})")


def stamp_database(settings: Settings) -> None:
    """Stamp a new mark in the SQLite database file and record it (hub/store/wal.py ``stamp``): at a start and a
    clean stop of ``serve`` and after ``accept-restore``, with :class:`StateLock` held. The old and the new mark
    are recorded first, so a crash during the stamp leaves a file whose mark is accepted; the old one is dropped
    once the checkpoint has put the new one into the file. Raises ``StoreError``."""
    files = sqlite_files(settings.effective_database_url)
    if files is None or not files.database.is_file():
        return
    mark = new_mark()
    try:
        with owner_only():
            write_secret(marks_path(settings), _marks_json((files.mark(), mark)))
            if stamp(files, mark):
                write_secret(marks_path(settings), _marks_json((mark,)))
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot stamp database {files.database}: {exc}") from exc


def _marks_json(marks: tuple[int | None, ...]) -> bytes:
    return (json.dumps({"marks": [m for m in marks if m is not None]}) + "\n").encode()


def empty_database_message(settings: Settings) -> str:
    where = settings.effective_database_url.split("@")[-1]
    return (f"database {where} is empty, but the state dir {settings.state_dir} belongs to an initialised hub: its "
            f"database was lost, truncated or replaced; restore it from a backup (or, with none, run `attest-hub db "
            f"upgrade` to create an empty schema), then run `attest-hub db accept-restore` ({RESTORE_DOC}); a new "
            "hub needs a new state dir")


def check_generation_of(settings: Settings, store: Store) -> None:
    """Raise ``RollbackError`` if the database is behind the state directory's generation."""
    recorded = read_generation(settings)
    with store.reading() as conn:
        current = int(store.get_state(conn, "generation") or 0)
    if recorded is None:
        if current == 0:
            raise RollbackError(f"database {store.where} has no generation record (made by an earlier release): "
                                "run `attest-hub init` (it adds what this release keeps in the state dir)")
        return  # a state directory that never recorded one (another machine): nothing to compare with
    if current < recorded.generation:
        raise RollbackError(
            f"database {store.where} is at generation {current}, behind generation {recorded.generation} recorded "
            f"in {settings.generation_path}: it was restored or rolled back, which would accept evidence already "
            f"seen again; if the restore is intended run `attest-hub db accept-restore` ({RESTORE_DOC})")


def check_announced(store: Store, epoch: int | None, generation: int | None = None) -> None:
    """Raise ``RollbackError`` if the database's epoch is below ``epoch`` or its generation below
    ``generation``: the epoch and generation this hub last published (signed, retained) on the broker
    (hub/server/announced.py). Then the database is older than that checkpoint."""
    with store.reading() as conn:
        current_epoch = int(store.get_state(conn, "epoch") or 0)
        current = int(store.get_state(conn, "generation") or 0)
    if epoch is not None and current_epoch < epoch:
        raise RollbackError(
            f"database {store.where} is at epoch {current_epoch}, behind epoch {epoch} this hub announced on the "
            f"broker: it was restored or rolled back (with the state dir), which would accept evidence already "
            f"seen again; if the restore is intended run `attest-hub db accept-restore` ({RESTORE_DOC})")
    if generation is not None and current < generation:
        raise RollbackError(
            f"database {store.where} is at generation {current}, behind generation {generation} this hub "
            f"published on the broker: it was restored or rolled back (with the state dir), which would accept "
            f"evidence already seen again; if the restore is intended run `attest-hub db accept-restore` "
            f"({RESTORE_DOC})")


def step_generation(settings: Settings, store: Store) -> Generation:
    """Advance the generation in the database, then record it in the state directory (the leader's step)."""
    with store.transaction() as conn:
        before = _snapshot(store, conn)
        record = Generation(before.generation + 1, before.epoch, before.audit_id, before.audit_head, before.chains)
        store.set_state(conn, "generation", str(record.generation))
    recorded = read_generation(settings)
    if recorded is not None and recorded.epoch > record.epoch:  # never forget a higher epoch issued
        record = Generation(record.generation, recorded.epoch, record.audit_id, record.audit_head, record.chains)
    write_generation(settings, record)
    return record


def adopt_generation(settings: Settings, store: Store) -> None:
    """A database and state directory from a release before generations and audit seals: start both at
    generation 1, and seal the audit chain as it is now (the seal vouches for what follows the upgrade).
    Needs the audit key (``init`` creates it); a database that has a generation is left alone."""
    if read_generation(settings) is not None:
        return
    try:
        key = read_secret(settings.audit_key_path, "audit key")
    except HubKeyError as exc:
        raise StoreError(str(exc)) from exc
    with store.transaction() as conn:
        snap = _snapshot(store, conn)
        if snap.generation:
            return
        store.set_state(conn, "generation", "1")
        if snap.audit_id and store.get_state(conn, "audit_seal") is None:
            store.set_state(conn, "audit_seal", seal(key, snap.audit_id, snap.audit_head))
    write_generation(settings, Generation(1, snap.epoch, snap.audit_id, snap.audit_head, snap.chains))


def init_hub(settings: Settings) -> str:
    """``attest-hub init``: the state directory and its secrets (``init_state``), then the database: create the
    schema in an empty database of a new hub, or check an existing one; returns "created" or "existing".

    A state directory that already belongs to a hub (its keys or a generation record) refuses an empty database
    (``SchemaError``): the database was lost, not new."""
    belongs = settings.hub_key_path.exists() or settings.generation_path.exists()
    init_state(settings)
    recovered = check_wal(settings)  # an existing database with a stale WAL beside it is refused, not opened
    with owner_only():  # a new SQLite file (and its -wal, -shm) is created owner-only
        store = Store(settings.effective_database_url, max_pages=settings.sqlite_max_pages, schema=False)
        try:
            with store.reading() as conn:
                state, _ = schema_state(conn)
            if state == "empty":
                if belongs:
                    raise SchemaError("empty", empty_database_message(settings))
                upgrade(store.engine)
                with store.transaction() as conn:
                    store.set_state(conn, "generation", "1")
                write_generation(settings, Generation(1, 0, 0, GENESIS))
                return "created"
            Store(settings.effective_database_url).close()  # SchemaError unless a hub database at head
            adopt_generation(settings, store)
        finally:
            store.close()
    record_recovery(settings, recovered)
    return "existing"


@dataclass(frozen=True, slots=True)
class RestoreAccepted:
    database_generation: int
    recorded_generation: int
    generation: int
    epoch_before: int
    epoch: int
    lost_audit_entries: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lost_entries(recorded: Generation | None, database: Generation) -> int:
    """Audit entries the state directory's record counts that the database no longer has: in every chain, the
    difference of the last ``seq`` (a record from before chains were kept counts the hub chain by id)."""
    if recorded is None:
        return 0
    marks = database.chain_marks()
    if HUB_CHAIN not in recorded.chain_marks():
        marks.pop(HUB_CHAIN, None)
        lost = max(0, recorded.audit_id - database.audit_id)
    else:
        lost = 0
    return lost + sum(max(0, seq - marks.get(name, (0, ""))[0]) for name, seq, _head in recorded.chains)


def accept_restore(settings: Settings, actor: str = "operator", *, announced_epoch: int | None = None,
                   announced_generation: int | None = None) -> RestoreAccepted:
    """``attest-hub db accept-restore``: adopt a restored database without re-opening replay.

    Rotates the nonce secret (nonces issued before, in any captured evidence, no longer verify), sets the
    epoch past every epoch issued, steps the generation past the recorded one, and appends an
    ``accept-restore`` audit entry naming what the restore lost. ``announced_epoch`` and
    ``announced_generation`` (the checkpoints retained on the broker) count as issued too. Raises
    ``NothingToAccept`` (and changes nothing) if the database is behind none of them. Run it with the hub
    stopped (the CLI holds :class:`StateLock`); every worker (on every machine) needs the new nonce secret
    before it starts."""
    try:
        read_secret(settings.nonce_secret_path, "nonce secret")
    except HubKeyError as exc:
        raise StoreError(str(exc)) from exc
    recorded = read_generation(settings)
    store = open_store(settings, check_generation=False, locked=True)
    try:
        with store.reading() as conn:
            current = int(store.get_state(conn, "generation") or 0)
            current_epoch = int(store.get_state(conn, "epoch") or 0)
        behind = []
        if recorded is not None and current < recorded.generation:
            behind.append(f"generation {recorded.generation} in {settings.generation_path}")
        if announced_generation is not None and current < announced_generation:
            behind.append(f"generation {announced_generation} published on the broker")
        if announced_epoch is not None and current_epoch < announced_epoch:
            behind.append(f"epoch {announced_epoch} announced on the broker")
        if not behind:
            checked = "the state dir's record" + ("" if recorded else " (none)") + (
                ", the broker's checkpoints" if announced_epoch is not None or announced_generation is not None
                else "")
            raise NothingToAccept(
                f"nothing to accept: the database is not behind {checked} (it is at generation {current}, epoch "
                f"{current_epoch}); accept-restore is only for a database restored from a backup, which the hub "
                "refuses")
        write_secret(settings.nonce_secret_path, os.urandom(32))
        with store.transaction() as conn:
            snap = _snapshot(store, conn)
            issued = max(snap.epoch, recorded.epoch if recorded else 0, announced_epoch or 0)
            generation = max(snap.generation, recorded.generation if recorded else 0, announced_generation or 0) + 1
            lost = lost_entries(recorded, snap)
            store.set_state(conn, "epoch", str(issued + 1))
            store.set_state(conn, "generation", str(generation))
            detail = {"database_generation": snap.generation, "epoch_before": snap.epoch, "epoch": issued + 1,
                      "generation": generation, "nonce_secret": "rotated",
                      "recorded_generation": recorded.generation if recorded else 0,
                      "recorded_audit_id": recorded.audit_id if recorded else 0,
                      "recorded_audit_head": recorded.audit_head if recorded else GENESIS,
                      "announced_generation": announced_generation or 0, "behind": behind,
                      "lost_audit_entries": lost}
            append(store, conn, [AuditDraft(time.time(), actor, "accept-restore", None, detail)])
            after = _snapshot(store, conn)
        write_generation(settings, Generation(generation, issued + 1, after.audit_id, after.audit_head,
                                              after.chains))
    finally:
        store.close()
    stamp_database(settings)  # the restored file gets this hub's mark: a WAL written on it from now on is its own
    return RestoreAccepted(snap.generation, recorded.generation if recorded else 0, generation, snap.epoch,
                           issued + 1, lost)
