"""The hub under test as ``attest-hub serve --workers N`` subprocesses, and their CPU and memory from /proc.

Running the hub in its own processes keeps its CPU separable from the load
generator's: CPU is the sum of user + system time of the serve process and
every descendant (the workers), read from ``/proc/<pid>/stat``.

``HUB_BENCH_WRAP`` (a command prefix, split on spaces) runs the hub under a profiler, e.g. a script that
runs ``py-spy record --subprocesses --format raw -o OUT -- "$@"`` and forwards SIGTERM to the hub; CPU
figures then include the profiler's own, so use it to see where the time goes, not for the figures.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


THREAD_ROLES = ("evidence loop", "commit thread", "MQTT network thread", "anomaly pass", "other threads")
"""How ``thread_cpu`` groups a hub's threads, by the OS names the hub gives them (hub/server/osthread.py)."""


def _role(pid: int, tid: int, name: str, workers: set[int]) -> str:
    if name.startswith("commit-"):
        return "commit thread"
    if name.startswith("mqtt-"):
        return "MQTT network thread"
    if name.startswith("anomaly-"):
        return "anomaly pass"
    if tid == pid and pid in workers:
        return "evidence loop"  # a worker's main thread: route, verify, batching, acknowledgement
    return "other threads"  # supervisor, metrics and HTTP threads, the resource tracker


def thread_cpu(pids: list[int], workers: list[int]) -> dict[str, float]:
    """CPU seconds (user + system) of every thread of ``pids``, summed by role (``THREAD_ROLES``)."""
    totals = dict.fromkeys(THREAD_ROLES, 0.0)
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            totals[_role(pid, tid, name, set(workers))] += (int(fields[11]) + int(fields[12])) / _TICK
    return totals


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def rss_bytes(pid: int) -> int:
    fields = _stat(pid)
    return 0 if fields is None else int(fields[21]) * _PAGE


@dataclass(frozen=True, slots=True)
class HubUsage:
    cpu_s: float
    worker_rss: tuple[int, ...]


class HubProcess:
    """``attest-hub serve``; ``usage()`` covers the serve process and all its descendants."""

    def __init__(self, state_dir: Path, database_url: str, broker: str, workers: int, log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.args = [str(Path(sys.executable).parent / "attest-hub"), "--state-dir", str(state_dir),
                     "--database-url", database_url, "--broker", broker, "serve", "--workers", str(workers)]
        self.workers = workers
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HubProcess:
        log = self.log_path.open("ab")
        wrap = os.environ.get("HUB_BENCH_WRAP", "").split()
        self.proc = subprocess.Popen([*wrap, *self.args], stdout=log, stderr=log, env=self.env)
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        tree = descendants(self.pid)
        if self.workers == 1:
            return [self.pid]  # one worker runs inside the serve process
        workers = []
        for pid in tree[1:]:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline and _parent(pid) == self.pid:
                workers.append(pid)  # the leader's anomaly pass process is a worker's child: not a worker
        return workers

    def thread_usage(self) -> dict[str, float]:
        """CPU seconds so far by thread role (``THREAD_ROLES``), over the serve process and its descendants."""
        return thread_cpu(descendants(self.pid), self.worker_pids())

    def usage(self) -> HubUsage:
        return HubUsage(cpu_seconds(descendants(self.pid)), tuple(rss_bytes(p) for p in self.worker_pids()))

    def wait_workers(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.worker_pids()) < self.workers:
            if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                raise RuntimeError(f"hub did not start {self.workers} workers; see {self.log_path}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in reversed(descendants(self.proc.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(5)
