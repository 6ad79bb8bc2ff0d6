"""Worker processes of a hub end with it, and a new ``serve`` waits for those of an earlier one.

``serve`` holds the state directory's exclusive lock (hub/crypto/hubstate.py, ``StateLock``) for its
lifetime, but its spawned workers are processes of their own: if the supervisor alone is killed (SIGKILL,
the OOM killer), they would keep processing evidence while a new ``serve`` took the lock and started
workers under the same identities. So each worker:

- asks the kernel for SIGTERM when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``): it finishes its
  batch, acknowledges what is committed and exits, as on a normal stop;
- holds a shared ``flock`` on ``state_dir/workers.lock`` for its lifetime.

A new ``serve``, holding the state directory's lock, waits until it can take ``workers.lock`` exclusively
(every earlier worker has ended) before starting its own, and refuses with one line if they are still there
after ``timeout_s``.
"""

from __future__ import annotations

import ctypes
import fcntl
import multiprocessing
import os
import signal
import time
from pathlib import Path

from hub.config import Settings
from hub.crypto.hubkeys import owner_only
from hub.crypto.hubstate import StateLocked
from hub.store import StoreError

_PR_SET_PDEATHSIG = 1


def workers_lock_path(settings: Settings) -> Path:
    return settings.state_dir / "workers.lock"


def _open(path: Path) -> int:
    try:
        with owner_only():
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open the lock file {path}: {exc.strerror or exc}") from exc


def die_with_parent() -> None:
    """This process gets SIGTERM when its parent ends (Linux); if the parent is already gone, at once.
    Elsewhere (no ``prctl``) nothing changes: the shared lock below still keeps a new ``serve`` waiting."""
    spawner = multiprocessing.parent_process()  # the supervisor, known to a spawned child even if already gone
    parent = spawner.pid if spawner is not None and spawner.pid else os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request took effect (even before this child ran)
        os.kill(os.getpid(), signal.SIGTERM)


def hold_presence(settings: Settings) -> int:
    """Take a shared lock on ``workers.lock`` for the rest of this process's life; returns its descriptor
    (the kernel releases the lock when the process ends). Raises ``StoreError`` if the file cannot be opened."""
    fd = _open(workers_lock_path(settings))
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a new serve is probing (an instant)
    return fd


def _holders(fd: int) -> list[int]:
    """The pids holding a lock on ``fd``'s file, from /proc/locks (Linux; empty elsewhere)."""
    stat = os.fstat(fd)
    inode = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    return sorted({int(f[4]) for f in (line.split() for line in lines) if len(f) > 5 and f[5] == inode
                   and f[4].isdigit() and int(f[4]) != os.getpid()})


def wait_for_earlier_workers(settings: Settings, timeout_s: float = 30.0) -> None:
    """Return once no worker of an earlier ``serve`` on this state directory is running.

    Raises ``StateLocked`` (one line) if some still hold ``workers.lock`` after ``timeout_s`` seconds."""
    fd = _open(workers_lock_path(settings))
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                if time.monotonic() >= deadline:
                    pids = " ".join(str(p) for p in _holders(fd)) or "unknown"
                    raise StateLocked(
                        f"worker processes of an earlier serve on {settings.state_dir} are still running after "
                        f"{timeout_s:.0f}s (their supervisor was killed; pids {pids}): stop them, then start "
                        "again") from None
                time.sleep(0.2)
                continue
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
    finally:
        os.close(fd)
