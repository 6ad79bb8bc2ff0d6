"""``serve --workers N``: N worker processes, each with its own persistent MQTT identity.

A dead worker is restarted under the same identity (``{hub_id}-w{index}``):
Mosquitto hands a shared subscription's queued messages back only to the
identity that held them. All shared state is in the database. For the same
reason, a start with fewer workers than before first drains the retired
identities' sessions (``HubWorker.drain``) and ends them, so no evidence is
stranded in a session nobody connects to again. Workers log at the
supervisor's verbosity.

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

from hub.config import Settings
from hub.server.logs import configure_logging

log = logging.getLogger(__name__)


def _worker_main(settings: Settings, index: int, verbosity: int) -> None:
    from hub.server.worker import HubWorker

    configure_logging(verbosity)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the supervisor decides
    HubWorker(settings, index).run(stop)


def _verbosity() -> int:
    """The verbosity the process was configured with (``configure_logging``), for the worker processes."""
    level = logging.getLogger().getEffectiveLevel()
    return 0 if level > logging.INFO else 1 if level == logging.INFO else 2


def retire_workers(settings: Settings, count: int, stop: threading.Event) -> int:
    """Drain and end the sessions of worker identities at or above ``count``; returns the evidence drained."""
    from hub.broker.transport import TransportError
    from hub.server.worker import HubWorker, forget_identities, retired_identities
    from hub.store import Store, StoreError

    store = Store(settings.effective_database_url)
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


def run_workers(settings: Settings, count: int, stop: threading.Event, verbosity: int | None = None) -> None:
    verbosity = _verbosity() if verbosity is None else verbosity
    retire_workers(settings, count, stop)
    if count == 1:
        from hub.server.worker import HubWorker

        HubWorker(settings, 0).run(stop)
        return
    ctx = multiprocessing.get_context("spawn")
    procs = {}
    for index in range(count):
        procs[index] = ctx.Process(target=_worker_main, args=(settings, index, verbosity),
                                   name=f"hub-w{index}")
        procs[index].start()
    try:
        while not stop.wait(0.5):
            for index, proc in list(procs.items()):
                if not proc.is_alive():
                    log.error("worker %d exited (%s); restarting it under the same identity", index, proc.exitcode)
                    time.sleep(0.5)
                    procs[index] = ctx.Process(target=_worker_main, args=(settings, index, verbosity),
                                               name=f"hub-w{index}")
                    procs[index].start()
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the worker finishes its batch and disconnects
        for proc in procs.values():
            proc.join(10)
            if proc.is_alive():
                proc.kill()
