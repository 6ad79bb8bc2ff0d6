"""Resident memory per active device of one worker's ``Pipeline``: in-process, SQLite, no broker.

``python -m bench.memory`` enrols ``--devices`` devices (one bulk insert per 20,000 rows, ``bench/stage.py``),
each with a key of its own unless ``--key-pool`` says how many keys they share (``bench/loadgen.py``), signs one
piece of evidence per device before anything is measured, warms the pipeline up with one batch, reads VmRSS
from /proc/self/status, feeds every device's evidence through ``Pipeline.process`` in batches (with the
worker's rate limiter), collects garbage and reads VmRSS again. The growth divided by the devices that sent
evidence is the figure: bytes of worker memory per active device (target: at most 1 KB at 100,000).

``--trace`` also runs tracemalloc over the measured phase and prints the allocation sites that grew most (slower:
use it at a smaller ``--devices``); ``--json`` writes the figures to a file. Figures are reported, never
asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from bench import loadgen
from bench.stage import enrol_bulk
from device_sim import keys as sim_keys
from device_sim.commands import Epoch
from hub import wire
from hub.appraisal.pipeline import Pipeline
from hub.appraisal.ratelimit import RateLimiter
from hub.config import load_settings
from hub.crypto.freshness import epoch_nonce
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import open_store
from hub.envelope import Incoming
from hub.reference.values import References
from hub.schemes import SchemeRegistry, default_schemes
from hub.server.localhub import prepare_state

TARGET_BYTES = 1024


def rss_bytes() -> int:
    """This process's resident set size (VmRSS of /proc/self/status), bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _pool(distinct: int) -> loadgen.KeyPool:
    private = tuple(ec.generate_private_key(ec.SECP256R1()) for _ in range(distinct))
    return loadgen.KeyPool(private, tuple(sim_keys.public_key_pem(k).decode() for k in private),
                           ec.generate_private_key(ec.SECP256R1()))


def measure(devices: int = 100_000, batch: int = 256, key_pool: int = 0, trace: bool = False,
            top: int = 15, **bounds: int) -> dict[str, Any]:
    """Bytes of RSS per active device after each of ``devices`` sent one evidence (``key_pool`` 0: own keys);
    ``bounds``: settings overridden (``anchor_cache_max``, ``key_cache_max``, ``rate_limit_devices_max``)."""
    started = time.monotonic()
    pool = _pool(key_pool or devices)
    with tempfile.TemporaryDirectory(prefix="hub-memory-") as tmp:
        settings = prepare_state(load_settings(None, environ={}, state_dir=Path(tmp), **bounds))
        enrol_bulk(settings.effective_database_url, devices, pool)
        hub_keys = load_hub_keys(settings)
        store = open_store(settings)
        try:
            with store.transaction() as conn:
                store.set_state(conn, "epoch", "1")
            refs = References(hub_keys.operator_keys)
            with store.reading() as conn:
                refs.load(store.latest_manifests(conn), store.latest_policies(conn))
            pipeline = Pipeline(store, SchemeRegistry(default_schemes()), hub_keys, refs,  # as hub/server/worker.py
                                rate_limiter=RateLimiter(settings.device_rate_per_s, settings.device_burst,
                                                         settings.rate_limit_devices_max),
                                epoch_period_s=settings.epoch_period_s,
                                anchor_cache_max=settings.anchor_cache_max, key_cache_max=settings.key_cache_max)
            bounds = {"anchor_cache_max": settings.anchor_cache_max, "key_cache_max": settings.key_cache_max,
                      "rate_limit_devices_max": settings.rate_limit_devices_max}
            factory = loadgen.EvidenceFactory(pool, Epoch(1, epoch_nonce(hub_keys.nonce_secret, 1), int(time.time())))
            messages = [Incoming(wire.device_topic(e.device_id, wire.EVIDENCE), e.payload, wire.FIRMWARE_MEDIA_TYPE)
                        for e in (factory.make(i) for i in range(devices))]
            del factory
            prepared_s = time.monotonic() - started
            batches = [messages[i:i + batch] for i in range(0, len(messages), batch)]
            statuses: dict[str, int] = {}
            _count(pipeline.process(batches[0]), statuses)  # imports, first-use caches: not per device
            warm = len(batches[0])
            gc.collect()
            if trace:
                tracemalloc.start()
            before = rss_bytes()
            start = time.process_time()
            for item in batches[1:]:
                _count(pipeline.process(item), statuses)
            cpu_s = time.process_time() - start
            gc.collect()
            after = rss_bytes()
            sites = _top_sites(tracemalloc.take_snapshot(), top) if trace else []
            if trace:
                tracemalloc.stop()
            sizes = {"key_cache": len(pipeline._key_cache), "committed_rows": len(pipeline._committed),
                     "rate_limiter": len(pipeline.rate_limiter._buckets) if pipeline.rate_limiter else 0}
        finally:
            store.close()
    active = devices - warm
    per = (after - before) / active
    return {"devices": devices, "active_measured": active, "key_pool": key_pool or devices, "batch": batch,
            "rss_before_mb": round(before / 2**20, 1), "rss_after_mb": round(after / 2**20, 1),
            "bytes_per_active_device": round(per), "target_bytes": TARGET_BYTES, "met": per <= TARGET_BYTES,
            "cpu_us_per_evidence": round(cpu_s / active * 1e6, 1), "statuses": statuses,
            "structure_entries": sizes, "bounds": bounds, "traced": trace, "top_sites": sites,
            "prepare_s": round(prepared_s, 1), "run_s": round(time.monotonic() - started, 1)}


def _count(outcome: Any, statuses: dict[str, int]) -> None:
    for decision in outcome.decisions:
        status = str(getattr(decision, "status", "?"))
        statuses[status] = statuses.get(status, 0) + 1
    if outcome.dropped:
        statuses["dropped"] = statuses.get("dropped", 0) + len(outcome.dropped)


def _top_sites(snapshot: tracemalloc.Snapshot, top: int) -> list[dict[str, Any]]:
    stats = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)]).statistics("lineno")
    return [{"site": f"{s.traceback[0].filename}:{s.traceback[0].lineno}", "kib": round(s.size / 1024, 1),
             "blocks": s.count} for s in stats[:top]]


def markdown(data: dict[str, Any]) -> str:
    lines = [f"{data['devices']:,} enrolled, {data['active_measured']:,} active measured "
             f"({data['key_pool']:,} distinct keys), batches of {data['batch']}",
             "", "| figure | value |", "|---|---|",
             f"| RSS before / after | {data['rss_before_mb']} / {data['rss_after_mb']} MB |",
             f"| bytes per active device (target <= {data['target_bytes']}) | {data['bytes_per_active_device']:,} "
             f"({'met' if data['met'] else 'missed'}) |",
             f"| entries: key cache / committed rows / rate limiter | {data['structure_entries']['key_cache']:,} / "
             f"{data['structure_entries']['committed_rows']:,} / {data['structure_entries']['rate_limiter']:,} |",
             f"| bounds (settings): anchor_cache_max / key_cache_max / rate_limit_devices_max | "
             f"{' / '.join(f'{v:,}' for v in data['bounds'].values())} |",
             f"| CPU per evidence | {data['cpu_us_per_evidence']} µs |",
             f"| verdicts | {data['statuses']} |"]
    if data["top_sites"]:
        lines += ["", "| allocation site (grew during the measured phase) | KiB | blocks |", "|---|---|---|"]
        lines += [f"| {s['site']} | {s['kib']:,} | {s['blocks']:,} |" for s in data["top_sites"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--key-pool", type=int, default=0, help="distinct device keys (0: one per device)")
    parser.add_argument("--trace", action="store_true", help="tracemalloc: the allocation sites that grew most")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    for name in ("anchor_cache_max", "key_cache_max", "rate_limit_devices_max"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name, help="override the setting")
    args = parser.parse_args(argv)
    bounds = {name: getattr(args, name) for name in ("anchor_cache_max", "key_cache_max", "rate_limit_devices_max")
              if getattr(args, name) is not None}
    data = measure(args.devices, args.batch, args.key_pool, args.trace, **bounds)
    print(markdown(data))
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
