"""``serve --workers N``: N worker processes, each with its own persistent MQTT identity.

A dead worker is restarted under the same identity (``{hub_id}-w{index}``):
Mosquitto hands a shared subscription's queued messages back only to the
identity that held them. All shared state is in the database.

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


def run_workers(settings: Settings, count: int, stop: threading.Event, verbosity: int = 1) -> None:
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
