"""SQLite's write-ahead log left beside a database: tell the hub's own from a stale one, without applying it.

SQLite checks a WAL's frames only against the WAL header's salts and checksums
(https://www.sqlite.org/fileformat2.html, section 4 "The Write-Ahead Log"),
never against the database file: a ``hub.db-wal`` left by a crashed hub
beside a ``hub.db`` restored from an older backup is replayed on top of it,
and the first connection that closes checkpoints the mix into ``hub.db``.
So a leftover WAL is judged here *before* any read-write connection opens:

- the database header's ``user_version`` (4 bytes, big-endian, at offset 60 of
  the file; section 1.3.13) holds a *mark* the hub stamps when it knows the
  file and its WAL agree (``stamp``: checkpointed to an empty WAL at a start and
  a clean stop of ``serve`` and after ``db accept-restore``); the state
  directory records the marks that may stand in the file. A file with another
  mark is not the one this hub's WAL was written on;
- the database as SQLite would see it, read through a read-only connection
  (which can neither checkpoint nor delete the WAL), passes
  ``PRAGMA integrity_check`` (https://www.sqlite.org/pragma.html#pragma_integrity_check):
  pages of an older file under newer b-tree pages from the WAL show as
  misplaced or unused pages, or as an index (from the WAL) whose entries the
  table (from the older file) does not have; ``quick_check`` sees the first
  kind only, and the check runs once after a crash, so the full one is used.

A WAL that passes is the hub's own (a crash, or a backup taken after the last
checkpoint, which the WAL brings up to date); ``adopt`` then checkpoints it,
so later commands do not check it again.

The check writes none of ``hub.db``, ``hub.db-wal`` and ``hub.db-shm``, so a refused pair is left exactly as
the operator found it (contents and modification times). A read-only connection still writes the wal-index in
``-shm`` (it rebuilds it after a crash); the reader opens ``-shm`` read-only instead (the ``readonly_shm`` URI
parameter of SQLite's unix VFS, src/os_unix.c, since 3.22), and with no live connection to vouch for that
index SQLite does not trust it and reads the WAL into heap memory (src/wal.c, ``SQLITE_READONLY_CANTINIT``).
Without a ``-shm`` file SQLite would create one: the two files are then read through hard links (or copies,
where the filesystem has none) in a private folder beside them, where it creates its own.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

WAL_HEADER_BYTES = 32  # a WAL this short holds no frame (fileformat2 section 4.1)
_MARK_OFFSET = 60  # the database header's user_version (fileformat2 section 1.3.13)
_HEADER_BYTES = 100  # the database header (fileformat2 section 1.3)
_SHM_DMS = 128  # the -shm byte every connection holds a shared lock on (src/os_unix.c, UNIX_SHM_DMS)
_LOCKS = "/proc/locks"  # the kernel's table of file locks (proc(5))


@dataclass(frozen=True, slots=True)
class WalFiles:
    """A SQLite database file and its ``-wal`` and ``-shm`` companions."""

    database: Path

    @property
    def wal(self) -> Path:
        return self.database.with_name(self.database.name + "-wal")

    @property
    def shm(self) -> Path:
        return self.database.with_name(self.database.name + "-shm")

    def leftover(self) -> int:
        """The size in bytes of a WAL with at least one frame where the database is or was, else 0 (none, empty
        or header-only: nothing to apply)."""
        try:
            size = self.wal.stat().st_size
        except OSError:
            return 0
        return size if size > WAL_HEADER_BYTES else 0

    def in_use(self) -> bool:
        """Whether a live connection (of any process, this one included) has the database open: SQLite holds a
        shared lock on the ``-shm`` file's DMS byte (offset 128, src/os_unix.c ``UNIX_SHM_DMS``) for as long as
        a connection has the WAL open, and the kernel drops it when the process ends, however it ends. Such a WAL
        is that connection's own, not one left by a crash.

        Read from the kernel's lock table (``/proc/locks``, proc(5)), never by opening ``-shm``: closing any
        descriptor of a file drops every POSIX lock this process holds on it, a live connection's too. False
        where the table cannot be read (not Linux): the WAL is then checked as a leftover."""
        try:
            shm = os.stat(self.shm)
            table = Path(_LOCKS).read_text(encoding="ascii", errors="replace")
        except OSError:
            return False
        inode = f"{os.major(shm.st_dev):02x}:{os.minor(shm.st_dev):02x}:{shm.st_ino}"
        for line in table.splitlines():
            fields = line.split()  # "1: POSIX ADVISORY READ 4242 fe:00:2146710 128 128"; a waiter has "->"
            if len(fields) < 8 or fields[1] == "->" or fields[5] != inode:
                continue
            start, end = fields[6], fields[7]
            if start.isdigit() and int(start) <= _SHM_DMS and (end == "EOF" or (end.isdigit()
                                                                                   and int(end) >= _SHM_DMS)):
                return True
        return False

    def mark(self) -> int | None:
        """The mark in the database file's header (not the WAL's), or None if the file has no full header."""
        try:
            with self.database.open("rb") as handle:
                handle.seek(_MARK_OFFSET)
                raw = handle.read(4)
        except OSError:
            return None
        return int.from_bytes(raw, "big", signed=True) if len(raw) == 4 else None


def sqlite_files(url: str) -> WalFiles | None:
    """The files of a SQLite database URL (``sqlite:///path``), or None for another dialect or memory."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return WalFiles(Path(parsed.database))


def foreign_wal(files: WalFiles, marks: tuple[int, ...] | None) -> str | None:
    """Why the leftover WAL does not belong to the database file, or None if it does.

    ``marks``: the marks the state directory allows in the file (None: none recorded, the mark is not
    compared). Reads only: the file, the WAL and ``-shm`` are left as they are (``_reading``). Cost: one header
    read, and a ``integrity_check`` of the whole database when the mark agrees (every page read, every index
    entry looked up in its table; measured in docs/RELIABILITY.md). Raises
    ``sqlite3.OperationalError`` if the database cannot be read at all (permissions, I/O, locked)."""
    try:
        size = files.database.stat().st_size
    except FileNotFoundError:
        size = 0
    if size < _HEADER_BYTES:  # SQLite would build a database out of the log alone
        return "the database file is missing or empty"
    if marks is not None:
        found = files.mark()
        if found not in marks:
            return (f"the file's mark {found} is not the mark {marks[-1]} this hub last stamped on it, so the file "
                    "was replaced")
    with _reading(files) as uri:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
        try:
            rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(1)").fetchall()]
        except sqlite3.OperationalError:  # cannot open, locked, I/O: a fault, not a verdict on the files
            raise
        except sqlite3.DatabaseError as exc:  # SQLITE_CORRUPT, SQLITE_NOTADB
            return f"the two together are not a database ({exc})"
        finally:
            conn.close()
    if rows != ["ok"]:  # integrity_check(1): the first problem only, said once
        first = " ".join(rows[0].replace("*** in database main ***", "").split())
        return f"the two together fail SQLite's integrity_check: {first[:160]}"
    return None


@contextmanager
def _reading(files: WalFiles) -> Iterator[str]:
    """A URI that reads the database with its WAL applied, writing none of the three files (module doc): the
    files themselves with ``-shm`` opened read-only, or, with no ``-shm``, links to them in a private folder
    beside them, removed afterwards. Raises ``sqlite3.OperationalError`` if neither can be made."""
    if files.shm.exists():
        yield f"file:{quote(str(files.database))}?mode=ro&readonly_shm=1"
        return
    try:
        folder = tempfile.mkdtemp(prefix=".wal-check-", dir=files.database.parent)
    except OSError as exc:
        raise sqlite3.OperationalError(f"cannot read {files.wal} without a -shm file: {exc}") from exc
    view = WalFiles(Path(folder) / files.database.name)
    try:
        for source, link in ((files.database, view.database), (files.wal, view.wal)):
            try:
                os.link(source, link)
            except OSError:  # no hard links here: a copy reads the same
                shutil.copyfile(source, link)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise sqlite3.OperationalError(f"cannot read {files.wal} without a -shm file: {exc}") from exc
    try:
        yield f"file:{quote(str(view.database))}?mode=ro"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _connect(files: WalFiles) -> sqlite3.Connection:
    conn = sqlite3.connect(str(files.database), isolation_level=None, timeout=0.0)
    conn.execute("PRAGMA busy_timeout=0")  # a live reader or writer: give up, never wait
    return conn


def adopt(files: WalFiles) -> bool:
    """Checkpoint a WAL found to belong to the database into it (TRUNCATE: the WAL is then empty); False if a
    live connection kept it from completing (it is checked again next time). Raises ``sqlite3.Error``."""
    conn = _connect(files)
    try:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    finally:
        conn.close()
    return not busy


def new_mark() -> int:
    """A random mark for ``stamp``: a positive signed 32-bit value (never 0, SQLite's default)."""
    return secrets.randbelow(2**31 - 1) + 1


def stamp(files: WalFiles, mark: int, timeout_s: float = 5.0) -> bool:
    """Write ``mark`` into the database header and checkpoint it into the file; True if the checkpoint
    completed (the file itself now holds the mark and the WAL is empty). Raises ``sqlite3.Error``."""
    conn = sqlite3.connect(str(files.database), isolation_level=None, timeout=timeout_s)
    try:
        conn.execute(f"PRAGMA user_version = {int(mark)}")
        conn.execute("PRAGMA busy_timeout=0")
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    finally:
        conn.close()
    return not busy
