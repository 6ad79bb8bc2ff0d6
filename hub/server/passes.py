"""Where the leader's anomaly pass runs: a process of its own (the default) or a thread of the leader.

The pass (hub/anomaly/watch.py) is pure Python: on a thread it shares the leader's GIL with the evidence
loop, and a pass with many new verdicts (after a drain of tens of thousands, about 65 µs each) held the
loop's batches back for as long. In a process of its own it takes no time from the evidence loop on a
machine with a core to spare, and shares only the database with it; it runs at a lower priority
(``PASS_NICENESS``), so where no core is spare the kernel runs the workers first. Either way the evidence loop never
waits for a pass: it starts one when it is due and applies a finished pass's result (metrics, broker
enforcement, signed commands) between its batches (``HubWorker._keep_watch``).

The pass process is spawned on the first pass, keeps the fleet's state in memory from then on (as the
thread does), reloads the stored manifests and policies before each pass (the leader adopts new ones
from the broker), gets SIGTERM if its parent dies (``die_with_parent``), and ends when the leader closes
its pipe; like a worker it holds a shared lock on ``workers.lock`` while it lives. A pass that fails is
logged and retried the next period; a process that died is started again.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.process import BaseProcess

from hub.anomaly.watch import AnomalyWatch, PassResult, detector_config, fleet_counts
from hub.config import Settings
from hub.server.osthread import name_thread
from hub.store import StoreError

log = logging.getLogger(__name__)
_RUN = "run"
PASS_NICENESS = 10
"""Added to the pass process's nice value: a pass is background work, and on a machine without a core to
spare (a first pass over tens of thousands of verdicts takes a core for seconds) the workers go first."""


class ThreadPasses:
    """Runs ``run_pass`` on a daemon thread of this process (``anomaly_process = false``)."""

    def __init__(self, run_pass: Callable[[], PassResult], name: str) -> None:
        self._run_pass = run_pass
        self._name = name
        self._thread: threading.Thread | None = None
        self._done: deque[PassResult] = deque()

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start a pass unless one is running."""
        if self.busy:
            return
        self._thread = threading.Thread(target=self._pass, name=self._name, daemon=True)
        self._thread.start()

    def _pass(self) -> None:
        name_thread(self._name)
        result = _guarded(self._run_pass)
        if result is not None:
            self._done.append(result)

    def finished(self) -> list[PassResult]:
        """The passes finished since the last call (no waiting)."""
        results = list(self._done)
        self._done.clear()
        return results

    def close(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


class ProcessPasses:
    """Runs the pass in a spawned process of its own (``anomaly_process = true``, the default)."""

    def __init__(self, settings: Settings, name: str) -> None:
        self._settings = settings
        self._name = name
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._pending = False

    @property
    def busy(self) -> bool:
        return self._pending

    def start(self) -> None:
        """Ask for a pass unless one is running; (re)starts the process if it is not there."""
        if self._pending:
            return
        if self._process is None or not self._process.is_alive():
            self._spawn()
        assert self._conn is not None
        try:
            self._conn.send(_RUN)
        except (OSError, ValueError) as exc:
            log.error("cannot reach the anomaly pass process (started again next period): %s", exc)
            self._discard()
            return
        self._pending = True

    def _spawn(self) -> None:
        self._discard()
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=pass_process_main, args=(self._settings, theirs),
                                        name=self._name, daemon=True)
        process.start()
        theirs.close()
        self._process, self._conn = process, ours

    def finished(self) -> list[PassResult]:
        """The pass that finished since the last call, if any (no waiting); a dead process is reported once."""
        if not self._pending or self._conn is None:
            return []
        try:
            if not self._conn.poll():
                if self._process is not None and not self._process.is_alive():
                    log.error("the anomaly pass process ended (exit code %s); started again next period",
                              self._process.exitcode)
                    self._discard()
                return []
            reply = self._conn.recv()
        except (EOFError, OSError) as exc:
            log.error("the anomaly pass process is gone (started again next period): %s", exc)
            self._discard()
            return []
        self._pending = False
        return [reply] if isinstance(reply, PassResult) else []

    def _discard(self) -> None:
        self._pending = False
        if self._conn is not None:
            self._conn.close()
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        self._process, self._conn = None, None

    def close(self, timeout: float = 30.0) -> None:
        """End the process: it finishes a pass under way (its transaction commits or rolls back) first."""
        if self._conn is not None:
            self._conn.close()  # the process reads EOF and ends
        if self._process is not None:
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(5)
        self._process, self._conn, self._pending = None, None, False


def _guarded(run_pass: Callable[[], PassResult]) -> PassResult | None:
    try:
        return run_pass()
    except StoreError as exc:
        log.error("anomaly pass failed (retried next period): %s", exc)
    except Exception:  # a bug in the pass must not end the leader silently
        log.exception("anomaly pass failed (retried next period)")
    return None


def pass_process_main(settings: Settings, conn: multiprocessing.connection.Connection) -> None:
    """The pass process: one pass per request on ``conn``, its ``PassResult`` (or None when it failed)
    sent back; ends at EOF. Opens its own store connection, hub keys and references."""
    from hub.crypto.hubkeys import load_hub_keys
    from hub.crypto.hubstate import open_store
    from hub.reference.values import References
    from hub.server.presence import die_with_parent, hold_presence

    die_with_parent()
    name_thread("anomaly-pass")  # this process's only busy thread: ps and top show it by this name
    os.nice(PASS_NICENESS)  # background work: the kernel gives the workers the cores first
    hold_presence(settings)  # a new serve waits for this process as for a worker (hub/server/presence.py)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the whole group: the leader stops us
    keys = load_hub_keys(settings)
    store = open_store(settings, max_pages=settings.sqlite_max_pages, check_generation=False)  # the leader checked
    references = References(keys.operator_keys)
    watch = AnomalyWatch(store, keys, references, detector_config(settings), command_ttl_s=settings.command_ttl_s)

    def run_pass() -> PassResult:
        with store.reading() as db:
            references.load(store.latest_manifests(db), store.latest_policies(db))  # adopts only newer ones
        return watch.run_pass() if settings.anomaly_interval_s else fleet_counts(store)

    try:
        while True:
            try:
                conn.recv()
            except (EOFError, OSError):
                return
            result = _guarded(run_pass)
            try:
                conn.send(result)
            except OSError:  # the leader stopped during the pass (BrokenPipeError): nobody to tell
                return
    finally:
        store.close()
        conn.close()
