"""``serve --workers N``: N worker processes, each with its own persistent MQTT identity.

A dead worker is restarted under the same identity (``{hub_id}-w{index}``):
Mosquitto hands a shared subscription's queued messages back only to the
identity that held them. All shared state is in the database.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from multiprocessing.synchronize import Event as MpEvent

from hub.config import Settings
from hub.logs import configure_logging

log = logging.getLogger(__name__)


def _worker_main(settings: Settings, index: int, stop: MpEvent, verbosity: int) -> None:
    from hub.service import HubWorker

    configure_logging(verbosity)
    bridge = threading.Event()

    def watch() -> None:
        stop.wait()
        bridge.set()

    threading.Thread(target=watch, daemon=True).start()
    HubWorker(settings, index).run(bridge)


def run_workers(settings: Settings, count: int, stop: threading.Event, verbosity: int = 1) -> None:
    if count == 1:
        from hub.service import HubWorker

        HubWorker(settings, 0).run(stop)
        return
    ctx = multiprocessing.get_context("spawn")
    mp_stop = ctx.Event()
    procs = {}
    for index in range(count):
        procs[index] = ctx.Process(target=_worker_main, args=(settings, index, mp_stop, verbosity),
                                   name=f"hub-w{index}")
        procs[index].start()
    try:
        while not stop.wait(0.5):
            for index, proc in list(procs.items()):
                if not proc.is_alive():
                    log.error("worker %d exited (%s); restarting it under the same identity", index, proc.exitcode)
                    time.sleep(0.5)
                    procs[index] = ctx.Process(target=_worker_main, args=(settings, index, mp_stop, verbosity),
                                               name=f"hub-w{index}")
                    procs[index].start()
    finally:
        mp_stop.set()
        for proc in procs.values():
            proc.join(10)
            if proc.is_alive():
                proc.kill()
