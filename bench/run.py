"""``make bench`` / ``make bench-quick``: run every phase, write bench/results/latest.json and latest.md.

Figures are reported, never asserted. ``--quick`` runs the same code at small
scale (CI proves the suite works in well under two minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import anomaly, loadgen, memory, report, stages
from bench.rawverify import raw_verify_per_cpu_s
from bench.scenarios import Cursor, DrainResult, drain, start_hub, steady
from bench.stage import enrol_bulk, open_stage

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Plan:
    raw_seconds: float
    databases: tuple[str, ...]
    small: int  # enrolled devices, small stage
    large: int  # enrolled devices, large stage
    drain_messages: int
    worker_counts: tuple[int, ...]
    rate: float
    steady_seconds: float
    low_rate: float  # the quiet fleet: CPU per evidence and quarantine latency at this rate too
    probes_per_s: float
    bad_share: float


FULL = Plan(3.0, ("sqlite", "postgresql"), 10_000, 1_000_000, 20_000, (1, 2), 1000.0, 8.0, 200.0, 5.0, 0.1)
QUICK = Plan(0.3, ("sqlite", "postgresql"), 1_000, 5_000, 1_000, (1, 2), 500.0, 2.0, 200.0, 5.0, 0.1)
TINY = Plan(0.1, ("sqlite", "postgresql"), 300, 600, 200, (1, 2), 100.0, 1.0, 50.0, 5.0, 0.1)  # test_bench_quick


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 2**20, 1),
            "loadavg_1_5_15": Path("/proc/loadavg").read_text().split()[:3],
            "kernel": platform.release(), "python": platform.python_version(),
            "mosquitto": shutil.which("mosquitto") or ""}


def drain_json(result: DrainResult) -> dict[str, Any]:
    return {**asdict(result), "throughput_per_s": round(result.throughput, 1),
            "hub_verified_per_cpu_s": round(result.per_cpu_s, 1), "seconds": round(result.seconds, 3),
            "hub_cpu_s": round(result.hub_cpu_s, 3), "broker_cpu_s": round(result.broker_cpu_s, 3),
            "db_server_cpu_s": round(result.db_server_cpu_s, 3)}


def run_database(database: str, plan: Plan, pool: loadgen.KeyPool, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"drain": [], "scale": []}
    for enrolled in (plan.small, plan.large):
        t = time.perf_counter()
        stage = open_stage(work / f"{database}-{enrolled}", database, 0, pool)
        stage.enrolled = enrolled
        enrol_s = enrol_bulk(stage.settings.effective_database_url, enrolled, pool)
        # probe devices for three steady phases (a quarantined probe sends no second command)
        cursor = Cursor(enrolled, probes=max(75, int(plan.probes_per_s * plan.steady_seconds * 3)))
        factory = None
        try:
            if enrolled == plan.small:
                for workers in plan.worker_counts:  # ascending: a session primed for N workers stays a share member
                    hub, factory = start_hub(stage, workers, work, factory)
                    hub.stop()
                    result = drain(stage, cursor, workers, plan.drain_messages, plan.bad_share, work, factory)
                    out["drain"].append(drain_json(result))
                    print(f"  {database} drain workers={workers}: {result.throughput:.0f}/s, "
                          f"{result.per_cpu_s:.0f}/CPU-s", flush=True)
            workers = max(plan.worker_counts)
            hub, factory = start_hub(stage, workers, work, factory)
            try:
                result_s = steady(stage, cursor, hub, factory, plan.rate, plan.steady_seconds, plan.probes_per_s)
                if enrolled == plan.small:
                    low = steady(stage, cursor, hub, factory, plan.low_rate, plan.steady_seconds, plan.probes_per_s)
                    out[f"low_rate_{workers}_workers"] = asdict(low)
                    print(f"  {database} at {plan.low_rate:.0f}/s, {workers} workers: quarantine p99 "
                          f"{low.quarantine_ms['p99']} ms, hub CPU {low.hub_cpu_per_s / low.rate * 1e6:.0f} "
                          "µs/evidence", flush=True)
            finally:
                hub.stop()
            if enrolled == plan.small:  # the quiet fleet on one worker, as the saturated (drain) figure it is held to
                hub, factory = start_hub(stage, 1, work, factory)
                try:
                    low = steady(stage, cursor, hub, factory, plan.low_rate, plan.steady_seconds, plan.probes_per_s)
                finally:
                    hub.stop()
                out["low_rate"] = asdict(low)
                print(f"  {database} at {plan.low_rate:.0f}/s, 1 worker: quarantine p99 {low.quarantine_ms['p99']} ms, "
                      f"hub CPU {low.hub_cpu_per_s / low.rate * 1e6:.0f} µs/evidence", flush=True)
            out["scale"].append({"enrolled_devices": enrolled, "enrol_seconds": round(enrol_s, 1), **asdict(result_s)})
            print(f"  {database} {enrolled} enrolled: p99 {result_s.latency_ms['p99']} ms, quarantine p99 "
                  f"{result_s.quarantine_ms['p99']} ms, rss/worker {result_s.worker_rss_mb} MB "
                  f"({time.perf_counter() - t:.0f}s)", flush=True)
        finally:
            stage.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small scale, same code (CI)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    parser.add_argument("--database", action="append", choices=("sqlite", "postgresql"), default=None)
    parser.add_argument("--bad-share", type=float, default=None, help="share of bad evidence in the drain phases")
    args = parser.parse_args(argv)
    plan = TINY if args.tiny else QUICK if args.quick else FULL
    if args.database:
        plan = Plan(**{**asdict(plan), "databases": tuple(args.database)})
    if args.bad_share is not None:
        plan = Plan(**{**asdict(plan), "bad_share": args.bad_share})
    out_dir = args.out or (RESULTS / "quick" if args.quick or args.tiny else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    raw = raw_verify_per_cpu_s(plan.raw_seconds)
    print(f"raw ES256 verify: {raw:.0f}/CPU-s", flush=True)
    small = args.quick or args.tiny
    stage_table = stages.run(1 if small else 3, devices=64 if small else 256, per_device=3 if small else 8,
                             batch=64 if small else 256)
    print(stages.markdown(stage_table), flush=True)
    memory_figure = memory.measure(devices=1_000 if args.tiny else 5_000 if small else 100_000)
    print(memory.markdown(memory_figure), flush=True)
    anomaly_figure = anomaly.run(*((300, 1_000, 200) if args.tiny else (1_000, 20_000, 6_000) if small
                                   else (4_000, 118_000, 6_000)))
    pool = loadgen.KeyPool.make()
    work = Path(tempfile.mkdtemp(prefix="attest-bench-"))
    try:
        databases = {db: run_database(db, plan, pool, work) for db in plan.databases}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    host = {**machine(), "loadavg_at_start": load_before}  # other work on the machine skews latency figures
    data = report.assemble(raw, databases, asdict(plan), host, quick=args.quick or args.tiny,
                           seconds=time.time() - started, stages=stage_table, memory=memory_figure,
                           anomaly=anomaly_figure)
    (out_dir / "latest.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (out_dir / "latest.md").write_text(report.markdown(data))
    print(report.markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
