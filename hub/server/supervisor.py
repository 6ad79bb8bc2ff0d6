"""``serve --workers N``: N worker processes, each with its own persistent MQTT identity.

A dead worker is restarted under the same identity (``{hub_id}-w{index}``):
Mosquitto hands a shared subscription's queued messages back only to the
identity that held them. All shared state is in the database. For the same
reason, a start with fewer workers than before first drains the retired
identities' sessions (``HubWorker.drain``) and ends them, so no evidence is
stranded in a session nobody connects to again. Workers log at the
supervisor's verbosity.

Restarts back off exponentially per worker (:class:`RestartPolicy`: 0.5 s,
1 s, 2 s ... capped at 30 s; a worker that ran for ``stable_s`` starts again
from the base delay). A worker that dies ``crash_loop`` times in a row without
running ``stable_s`` is in a crash loop: the supervisor stops every worker and
raises :class:`CrashLoopError` with one message (``serve`` exits 3).

Workers are stopped with SIGTERM, not a shared ``multiprocessing.Event``: a
worker killed while waiting on such an event (SIGKILL, the OOM killer) leaves
its condition variable expecting a waiter that never wakes, and ``set()``
then blocks the supervisor forever.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess

from hub.config import Settings
from hub.server.logs import configure_logging

log = logging.getLogger(__name__)

WorkerTarget = Callable[[Settings, int, int], None]


class CrashLoopError(RuntimeError):
    """A worker kept dying right after each start; every worker was stopped."""


@dataclass(slots=True)
class RestartPolicy:
    """Exponential restart backoff per worker, and when a run of failures is a crash loop.

    ``delay(n)`` is the wait before the n-th consecutive restart (n >= 1): ``base_s * 2**(n-1)`` capped at
    ``cap_s``. A run that lasted ``stable_s`` seconds or more resets the count.
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    stable_s: float = 60.0
    crash_loop: int = 6
    _failures: dict[int, int] = field(default_factory=dict)

    def delay(self, failures: int) -> float:
        return float(min(self.cap_s, self.base_s * 2 ** max(0, failures - 1)))

    def record_exit(self, index: int, ran_s: float) -> int:
        """Count the exit of worker ``index`` after ``ran_s`` seconds; return its consecutive failures."""
        failures = 1 if ran_s >= self.stable_s else self._failures.get(index, 0) + 1
        self._failures[index] = failures
        return failures

    def is_crash_loop(self, failures: int) -> bool:
        return failures >= self.crash_loop


def _worker_main(settings: Settings, index: int, verbosity: int) -> None:
    from hub.server.presence import die_with_parent, hold_presence
    from hub.server.worker import HubWorker

    configure_logging(verbosity)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the supervisor decides
    die_with_parent()  # a killed supervisor ends its workers too (hub/server/presence.py)
    hold_presence(settings)
    try:
        HubWorker(settings, index).run(stop)
    except Exception as exc:  # one line, not a traceback per restart; -v keeps the traceback
        log.error("worker %d stopped: %s: %s", index, type(exc).__name__, exc, exc_info=verbosity >= 2)
        raise SystemExit(3) from None


@dataclass(slots=True)
class _Slot:
    proc: BaseProcess
    started: float
    restart_at: float = 0.0  # > 0: dead, to be started again at this monotonic time


def retire_workers(settings: Settings, count: int, stop: threading.Event) -> int:
    """Drain and end the sessions of worker identities at or above ``count``; returns the evidence drained."""
    from hub.broker.transport import TransportError
    from hub.crypto.hubstate import open_store
    from hub.server.worker import HubWorker, forget_identities, retired_identities
    from hub.store import StoreError

    try:
        store = open_store(settings)
    except StoreError as exc:
        log.error("cannot drain retired worker identities: %s", exc)
        return 0
    try:
        retired = retired_identities(store, count)
        drained = 0
        for index in retired:
            log.warning("worker identity %d is retired (now %d worker(s)): draining its session", index, count)
            drained += HubWorker(settings, index).drain(stop)
        if retired and not stop.is_set():
            forget_identities(store, count)
        return drained
    except (StoreError, TransportError) as exc:  # retried at the next start; the workers start regardless
        log.error("cannot drain retired worker identities: %s", exc)
        return 0
    finally:
        store.close()


def run_workers(settings: Settings, count: int, stop: threading.Event, verbosity: int = 1, *,
                policy: RestartPolicy | None = None, target: WorkerTarget = _worker_main) -> None:
    """Run ``count`` workers until ``stop`` is set; restart dead ones with backoff.

    ``count == 1`` runs the worker in this process (its exceptions propagate). Raises :class:`CrashLoopError`
    when a worker is in a crash loop (all workers are stopped first). Worker identities at or above ``count``
    that held a persistent session are drained and ended (``retire_workers``) on a thread, beside the workers,
    so the workers never wait for a drain. The drain resumes the retired session unsubscribed: the broker
    adds no live evidence to it, and it ends about ``quiet_s`` after the queued backlog is decided (before,
    it stayed a member of the shared subscription and took its turn of the live evidence for up to 300 s).
    """
    drainer = threading.Thread(target=retire_workers, args=(settings, count, stop), name="retire-drain",
                               daemon=True)
    drainer.start()
    try:
        _run_workers(settings, count, stop, verbosity, policy, target)
    finally:
        drainer.join(30)


def _run_workers(settings: Settings, count: int, stop: threading.Event, verbosity: int,
                 policy: RestartPolicy | None, target: WorkerTarget) -> None:
    if count == 1:
        from hub.server.worker import HubWorker

        HubWorker(settings, 0).run(stop)
        return
    policy = policy or RestartPolicy()
    ctx = multiprocessing.get_context("spawn")

    def spawn(index: int) -> _Slot:
        proc = ctx.Process(target=target, args=(settings, index, verbosity), name=f"hub-w{index}")
        proc.start()
        return _Slot(proc, time.monotonic())

    slots = {index: spawn(index) for index in range(count)}
    try:
        while not stop.wait(0.2):
            now = time.monotonic()
            for index, slot in list(slots.items()):
                if slot.restart_at:
                    if now >= slot.restart_at:
                        slots[index] = spawn(index)
                    continue
                if slot.proc.is_alive():
                    continue
                ran = now - slot.started
                failures = policy.record_exit(index, ran)
                if policy.is_crash_loop(failures):
                    raise CrashLoopError(
                        f"worker {index} exited {failures} times in a row, each within {policy.stable_s:.0f}s of "
                        f"starting (last exit code {slot.proc.exitcode}): stopping the hub; see the worker's "
                        "error above")
                wait = policy.delay(failures)
                log.error("worker %d exited (code %s) after %.1fs; restarting it under the same identity in %.1fs",
                          index, slot.proc.exitcode, ran, wait)
                slot.restart_at = now + wait
    finally:
        procs = [slot.proc for slot in slots.values()]
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the worker finishes its batch and disconnects
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
