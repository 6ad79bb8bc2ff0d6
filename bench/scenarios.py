"""The measured phases: backlog drain (efficiency, throughput) and steady load (latency, memory)."""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from bench import loadgen
from bench.hubproc import HubProcess, cpu_seconds
from bench.stage import Stage
from hub.store import Store
from hub.store.db import VERDICTS

_STRIDE = 1_000_003  # a prime: (k * stride) % n visits distinct devices spread over the whole table


def _postgres_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == "postgres":
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


@dataclass
class Cursor:
    """Hands out device indexes; the last ``probes`` indexes are kept for contraindicated probes."""

    enrolled: int
    probes: int
    next: int = 0
    next_probe: int = 0

    def take(self, n: int) -> list[int]:
        usable = self.enrolled - self.probes
        out = [(k * _STRIDE) % usable for k in range(self.next, self.next + n)]
        self.next += n
        return out

    def take_probes(self, n: int) -> list[int]:
        out = [self.enrolled - self.probes + (self.next_probe + k) % self.probes for k in range(n)]
        self.next_probe += n
        return out


@dataclass
class DrainResult:
    workers: int
    messages: int
    bad: int
    seconds: float
    hub_cpu_s: float
    broker_cpu_s: float
    db_server_cpu_s: float
    statuses: dict[str, int] = field(default_factory=dict)
    thread_cpu_s: dict[str, float] = field(default_factory=dict)
    """The hub's CPU over the drain by thread role (bench/hubproc.py ``THREAD_ROLES``)."""

    @property
    def throughput(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def per_cpu_s(self) -> float:
        return self.messages / self.hub_cpu_s if self.hub_cpu_s > 0 else 0.0


def _hub(stage: Stage, workers: int, work: Path) -> HubProcess:
    env = {"ATTEST_HUB_OPERATOR_KEYS": ",".join(stage.settings.operator_keys),
           "ATTEST_HUB_EPOCH_PERIOD_S": str(stage.settings.epoch_period_s)}
    return HubProcess(stage.settings.state_dir, stage.settings.effective_database_url, stage.broker_address,
                      workers, work / f"hub-{stage.database}-{stage.enrolled}.log", env)


def start_hub(stage: Stage, workers: int, work: Path, factory: loadgen.EvidenceFactory | None = None,
              ) -> tuple[HubProcess, loadgen.EvidenceFactory]:
    """Start the hub and wait for its signed epoch; the stage's one factory (device counters) is kept."""
    hub = _hub(stage, workers, work).start()
    hub.wait_workers()
    epoch = loadgen.read_epoch(stage.broker.host, stage.broker.port, stage.hub_key_pem)
    time.sleep(1.0)  # every worker connected and subscribed
    await_first_pass(hub)
    if factory is None:
        return hub, loadgen.EvidenceFactory(stage.pool, epoch)
    factory.epoch = epoch
    return hub, factory


def await_first_pass(hub: HubProcess, appear_s: float = 5.0, quiet_s: float = 0.5, limit_s: float = 30.0) -> float:
    """Wait until the leader's first anomaly pass after a start has ended; returns its CPU seconds so far.

    That pass reads the detector's whole stored state (seconds of CPU after the drains' tens of thousands of
    verdicts), once per hub start; later passes cost what is new. A steady phase measures the hub in its steady
    state, so it starts after it (docs/SCALING.md). The pass has ended when the pass process's CPU time has not
    moved for ``quiet_s``; a hub whose pass has not started within ``appear_s`` is not waited for."""
    began = time.monotonic()
    last = hub.thread_usage().get("anomaly pass", 0.0)
    still_since = began
    while time.monotonic() - began < limit_s:
        time.sleep(0.1)
        now = hub.thread_usage().get("anomaly pass", 0.0)
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= (quiet_s if last > 0 else appear_s):
            break
    return last


def _max_verdict_id(stage: Stage) -> int:
    store = Store(stage.settings.effective_database_url)
    try:
        with store.reading() as conn:
            return int(conn.execute(select(func.coalesce(func.max(VERDICTS.c.id), 0))).scalar_one())
    finally:
        store.close()


def _statuses(stage: Stage, after_id: int) -> dict[str, int]:
    store = Store(stage.settings.effective_database_url)
    try:
        with store.reading() as conn:
            rows = conn.execute(select(VERDICTS.c.status, func.count()).where(VERDICTS.c.id > after_id)
                                .group_by(VERDICTS.c.status))
            return {str(r[0]): int(r[1]) for r in rows}
    finally:
        store.close()


def drain(stage: Stage, cursor: Cursor, workers: int, messages: int, bad_share: float, work: Path,
          factory: loadgen.EvidenceFactory) -> DrainResult:
    """Queue ``messages`` while the hub is stopped (its persistent sessions keep them), then time the drain.

    CPU and time run from the first new verdict to the last, so process start-up is not counted.
    """
    factory.bad_share = bad_share
    items = factory.batch(cursor.take(messages))
    baseline_id = _max_verdict_id(stage)
    baseline = stage.verdict_count()
    publisher = loadgen.Publisher(stage.broker.host, stage.broker.port)
    try:
        publisher.burst(items)
    finally:
        publisher.close()
    hub = _hub(stage, workers, work).start()
    broker_pid = stage.broker.pid or 0
    try:
        while stage.verdict_count() == baseline:
            time.sleep(0.02)
        t0, cpu0, threads0 = time.perf_counter(), hub.usage().cpu_s, hub.thread_usage()
        b0, d0 = cpu_seconds([broker_pid]), cpu_seconds(_postgres_pids())
        deadline = t0 + 600
        while stage.verdict_count() < baseline + messages and time.perf_counter() < deadline:
            time.sleep(0.02)
        t1, cpu1, threads1 = time.perf_counter(), hub.usage().cpu_s, hub.thread_usage()
        b1, d1 = cpu_seconds([broker_pid]), cpu_seconds(_postgres_pids())
    finally:
        hub.stop()
    done = stage.verdict_count() - baseline
    return DrainResult(workers, done, sum(1 for i in items if i.bad), t1 - t0, cpu1 - cpu0, b1 - b0,
                       d1 - d0 if stage.database == "postgresql" else 0.0, _statuses(stage, baseline_id),
                       {role: round(max(0.0, threads1[role] - threads0.get(role, 0.0)), 3) for role in threads1})


@dataclass
class SteadyResult:
    workers: int
    rate: float
    seconds: float
    published: int
    completed: int
    latency_ms: dict[str, float]
    probes: int
    quarantined: int
    quarantine_ms: dict[str, float]
    hub_cpu_per_s: float
    worker_rss_mb: list[float]
    thread_cpu_s: dict[str, float] = field(default_factory=dict)
    """The hub's CPU while evidence was published, by thread role (bench/hubproc.py ``THREAD_ROLES``)."""


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {"p50": round(q[49], 2), "p99": round(q[98], 2), "max": round(ordered[-1], 2)}


def steady(stage: Stage, cursor: Cursor, hub: HubProcess, factory: loadgen.EvidenceFactory, rate: float,
           seconds: float, probes_per_s: float) -> SteadyResult:
    """Honest evidence at ``rate``/s; now and then a contraindicated one from a probe, timed to its quarantine."""
    count = int(rate * seconds)
    factory.bad_share = 0.0
    honest = factory.batch(cursor.take(count))
    every = max(1, int(rate / probes_per_s)) if probes_per_s > 0 else count + 1
    probe_items = [factory.make(i, tampered=True) for i in cursor.take_probes(count // every)]
    schedule: list[loadgen.Evidence] = []
    for k, item in enumerate(honest):
        schedule.append(item)
        if (k + 1) % every == 0 and probe_items:
            schedule.append(probe_items.pop())
    watcher = loadgen.Watcher(stage.broker.host, stage.broker.port, stage.hub_key_pem)
    publisher = loadgen.Publisher(stage.broker.host, stage.broker.port)
    sent: dict[str, tuple[float, bool]] = {}
    cpu0, t0, threads0 = hub.usage().cpu_s, time.perf_counter(), hub.thread_usage()
    try:
        for item, at in publisher.paced(schedule, rate * len(schedule) / count):
            sent[item.device_id] = (at, item.contraindicated)
        t_pub = time.perf_counter()
        cpu_pub, threads_pub = hub.usage().cpu_s, hub.thread_usage()
        deadline = time.monotonic() + 30
        while len(watcher.results) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        usage = hub.usage()
    finally:
        publisher.close()
        watcher.close()
    results = [(watcher.results[d] - at) * 1000 for d, (at, _) in sent.items() if d in watcher.results]
    probes = [d for d, (_, bad) in sent.items() if bad]
    quarantine = [(watcher.quarantines[d] - sent[d][0]) * 1000 for d in probes if d in watcher.quarantines]
    return SteadyResult(
        workers=hub.workers, rate=rate, seconds=round(t_pub - t0, 2), published=len(sent),
        completed=len(results), latency_ms=_percentiles(results), probes=len(probes), quarantined=len(quarantine),
        quarantine_ms=_percentiles(quarantine), hub_cpu_per_s=round((cpu_pub - cpu0) / (t_pub - t0), 3),
        worker_rss_mb=[round(r / 2**20, 1) for r in usage.worker_rss],
        thread_cpu_s={role: round(max(0.0, threads_pub[role] - threads0.get(role, 0.0)), 3) for role in threads_pub},
    )


def status_mix(results: list[DrainResult]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for result in results:
        total.update(result.statuses)
    return dict(total)
