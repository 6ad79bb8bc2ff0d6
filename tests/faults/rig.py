"""The fault suite's rig (fixtures in conftest.py): a simulated fleet streaming evidence through a real Mosquitto
into a hub while one fault is injected, then a ledger check against what the devices sent.

Every test follows ``FaultRun``: stream, wait for verdicts, inject the fault, restore,
measure how long until everything sent before the restore has its verdict and receipt
(the recovery time), stream a little more, stop fresh evidence, let the devices re-send
what still lacks a receipt, and check that every piece of evidence has exactly one
verdict, every device holds a receipt for all it sent, and the due quarantine command
reached the tampered device. The figures of each test are printed at the end of the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select

from device_sim.device import SimDevice
from device_sim.fleet import Fleet
from device_sim.records import Profile
from hub.crypto.hubstate import open_store
from hub.store import StoreError
from hub.store.db import VERDICTS
from tests.e2e import HubEnv

MIX = "honest:7,tampered:1"
DEVICES = 8
INTERVAL_S = 0.25  # one fresh evidence per device per round
RESEND_AFTER_S = 0.5  # first re-send of evidence without a receipt; then doubling, at most 4 s apart
MAX_RESENDS = 12
SETTLE_S = 40.0
FAST_HUB: dict[str, object] = {"batch_wait_ms": 20.0}
REPORT_KEY = pytest.StashKey[list["FaultReport"]]()
VENV_BIN = Path(sys.executable).parent


class FaultCheckError(AssertionError):
    """The ledger does not balance: evidence lost, double-counted or not receipted."""


@dataclass(frozen=True)
class FaultReport:
    fault: str
    sent: int  # distinct pieces of evidence the devices signed and published
    verified: int  # verdict rows stored for them
    resent: int  # re-sends for want of a receipt
    recovery_s: float  # fault restored -> everything sent before it verified and receipted
    notes: str = ""


# --- the ledger ----------------------------------------------------------------------


def sent_refs(devices: list[SimDevice]) -> set[tuple[str, str]]:
    return {(d.device_id, f"{r.bootcount}:{r.seq}") for d in devices for r in d.evidence_log}


def verdict_counts(env: HubEnv) -> Counter[tuple[str, str]]:
    """(device id, dedup key) -> verdict rows; empty while the database cannot be read."""
    try:
        store = open_store(env.settings)
    except StoreError:
        return Counter()
    try:
        with store.reading() as conn:
            rows = conn.execute(select(VERDICTS.c.device_id, VERDICTS.c.dedup_key)).all()
    except StoreError:
        return Counter()
    finally:
        store.close()
    return Counter((r[0], r[1]) for r in rows)


def settled(env: HubEnv, devices: list[SimDevice], refs: set[tuple[str, str]] | None = None) -> bool:
    """Every piece of evidence in ``refs`` (default: all sent) has a verdict and a receipt."""
    wanted = sent_refs(devices) if refs is None else refs
    counts = verdict_counts(env)
    if any(counts[ref] < 1 for ref in wanted):
        return False
    acked = {(d.device_id, f"{b}:{s}") for d in devices for (b, s) in d.acknowledged}
    return wanted <= acked


def check_ledger(env: HubEnv, devices: list[SimDevice]) -> tuple[int, int]:
    """Exactly one verdict per piece of evidence sent, none for anything else, all receipted."""
    sent = sent_refs(devices)
    counts = verdict_counts(env)
    missing = sorted(ref for ref in sent if counts[ref] == 0)
    doubled = sorted(ref for ref, n in counts.items() if n > 1)
    unknown = sorted(ref for ref in counts if ref not in sent)
    unreceipted = sorted((d.device_id, r.ref) for d in devices for r in d.unacknowledged())
    if missing or doubled or unknown or unreceipted:
        raise FaultCheckError(f"missing {missing[:5]} ({len(missing)}), doubled {doubled[:5]} ({len(doubled)}), "
                              f"unknown {unknown[:5]}, unreceipted {unreceipted[:5]} ({len(unreceipted)})")
    for device in devices:  # the due command: tampered firmware is quarantined, and the device knows it
        if device.profile is Profile.TAMPERED and not (
                device.quarantined and env.device_status(device.device_id) == "quarantined"):
            raise FaultCheckError(f"{device.device_id}: quarantine command did not reach the device")
    return len(sent), sum(counts.values())


# --- the stream -------------------------------------------------------------------------


class Stream:
    """Publishes rounds on a thread: fresh evidence while ``fresh`` is set, re-sends always."""

    def __init__(self, fleets: list[Fleet], interval: float = INTERVAL_S) -> None:
        self.fleets = fleets
        self.interval = interval
        self.fresh = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-stream", daemon=True)

    def start(self) -> Stream:
        self.fresh.set()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for fleet in self.fleets:
                fleet.publish_round(fresh=self.fresh.is_set())
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> float:
    """Poll until ``predicate`` holds; returns the seconds it took, raises on timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise FaultCheckError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - start


def make_fleet(env: HubEnv, devices: list[SimDevice], port: int | None = None, *, prefix: str = "fault-fleet",
               connections: int = 2, keepalive: int = 5) -> Fleet:
    return Fleet(env.broker.host, port or env.broker.port, devices, env.hub_key_pem, connections=connections,
                 client_id_prefix=prefix, keepalive=keepalive, resend_after=RESEND_AFTER_S, resend_backoff=2.0,
                 max_resends=MAX_RESENDS)


@dataclass
class FaultRun:
    """One fault test's course; see the module docstring."""

    name: str
    env: HubEnv
    fleets: list[Fleet]
    reports: list[FaultReport]
    devices: list[SimDevice] = field(default_factory=list)
    stream: Stream | None = None

    def __post_init__(self) -> None:
        self.devices = [d for f in self.fleets for d in f.devices]

    def begin(self, warmup_rounds: int = 3) -> None:
        for fleet in self.fleets:
            fleet.start()
            if fleet.wait_for_epoch(15) is None:
                raise FaultCheckError("no epoch from the hub")
        self.stream = Stream(self.fleets).start()
        wait_until(lambda: sum(verdict_counts(self.env).values()) >= warmup_rounds * len(self.devices), 20,
                   "verdicts before the fault")

    def recover(self, *, timeout: float = SETTLE_S) -> float:
        """Called at the moment the fault is restored: seconds until all evidence sent so far is settled."""
        refs = sent_refs(self.devices)
        return wait_until(lambda: settled(self.env, self.devices, refs), timeout, f"{self.name}: recovery")

    def finish(self, recovery_s: float, notes: str = "", more_rounds: int = 3) -> FaultReport:
        assert self.stream is not None
        time.sleep(more_rounds * INTERVAL_S)  # the stream goes on after the recovery (no assertion on it)
        self.stream.fresh.clear()
        try:
            wait_until(lambda: settled(self.env, self.devices), SETTLE_S, f"{self.name}: every receipt")
        except FaultCheckError:
            check_ledger(self.env, self.devices)  # says what is missing
            raise
        self.stream.stop()
        sent, verified = check_ledger(self.env, self.devices)
        report = FaultReport(self.name, sent, verified, sum(f.resent for f in self.fleets), round(recovery_s, 2),
                             notes)
        self.reports.append(report)
        return report

    def close(self) -> None:
        if self.stream is not None:
            self.stream.stop()
        for fleet in self.fleets:
            fleet.stop(flush_timeout=0.5)


# --- a hub as real processes ---------------------------------------------------------------


class HubProcess:
    """``attest-hub serve`` as a child process (SIGKILL-able), optionally under a wrapper (faketime)."""

    def __init__(self, env: HubEnv, workers: int = 1, *, extra_env: dict[str, str] | None = None,
                 wrapper: list[str] | None = None, log_path: Path | None = None) -> None:
        s = env.settings
        self.command = [*(wrapper or []), str(VENV_BIN / "attest-hub"), "-v", "--state-dir", str(s.state_dir),
                        "--broker", f"{s.broker_host}:{s.broker_port}", "serve", "--workers", str(workers)]
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("ATTEST_HUB_")}
        self.environ = {**inherited, **{f"ATTEST_HUB_{k.upper()}": str(v) for k, v in FAST_HUB.items()},
                        **(extra_env or {})}
        if s.database_url:
            self.environ["ATTEST_HUB_DATABASE_URL"] = s.database_url
        self.environ["ATTEST_HUB_OPERATOR_KEYS"] = ",".join(s.operator_keys)
        self.log_path = log_path or s.state_dir / "hub-process.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HubProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command, env=self.environ, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)
        return self

    def worker_pids(self) -> list[int]:
        """The supervisor's worker children (``--workers`` > 1), from /proc."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        pids = [int(p) for p in children.read_text().split()] if children.exists() else []
        return [p for p in pids if "spawn_main" in _cmdline(p)]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
