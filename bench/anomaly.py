"""The leader's anomaly pass: its cost per pass, and how long it holds up a thread deciding evidence.

``python -m bench.anomaly`` builds a SQLite hub state with ``--devices`` enrolled
devices and ``--verdicts`` stored verdicts (real firmware evidence, a few distinct
encodings reused), then times, in this process:

- the first pass (reads every verdict: a leader's first pass on an existing fleet);
- a pass with nothing new, and a pass with ``--new`` new verdicts, each with the
  state kept in memory (the product) and with a full recomputation each pass
  (``incremental=False``: what every pass cost before);
- the delay the pass imposes on another thread of the same process (the GIL):
  a thread doing 1 ms units of CPU work meanwhile; its worst gap over 1 ms;
- the same delay with the pass in a process of its own (``ProcessPasses``, the
  product's default, ``anomaly_process = true``), after ``--new`` new verdicts.

CPU is ``time.thread_time`` of the pass's thread, wall is ``perf_counter``.
Figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import loadgen
from bench.stage import enrol_bulk
from device_sim.commands import Epoch
from hub.anomaly.stats import DetectorConfig
from hub.anomaly.watch import AnomalyWatch, PassResult
from hub.config import load_settings
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import open_store
from hub.reference.values import References
from hub.server.localhub import prepare_state
from hub.server.passes import ProcessPasses
from hub.store import Store
from hub.store.db import VERDICTS

INTERVAL_S = 30.0


def _verdict_rows(first: int, count: int, devices: int, evidence: list[bytes], t0: float) -> list[dict[str, Any]]:
    rows = []
    for k in range(first, first + count):
        index = k % devices
        seq = k // devices + 1
        rows.append({"device_id": loadgen.device_id(index), "scheme": "firmware", "dedup_key": f"1:{seq}",
                     "received_at": t0 + seq * INTERVAL_S + (index % 97) * 0.01, "authenticated": True,
                     "tier": 2, "status": "affirming", "trust_vector": "{}", "problems": "[]", "action": "affirm",
                     "policy_ref": "bench", "trace_id": "", "evidence": evidence[index % len(evidence)],
                     "evidence_length": len(evidence[index % len(evidence)]), "evidence_sha256": None})
    return rows


def _insert(store: Store, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), 5000):
        with store.transaction() as conn:
            conn.execute(VERDICTS.insert(), rows[start:start + 5000])


def _catch_up(watch: AnomalyWatch) -> None:
    while watch.run_pass().processed:
        pass


def _timed(fn: Callable[[], object]) -> dict[str, float]:
    cpu, wall = time.thread_time(), time.perf_counter()
    fn()
    return {"cpu_ms": round((time.thread_time() - cpu) * 1000, 1),
            "wall_ms": round((time.perf_counter() - wall) * 1000, 1)}


def _delay_while(busy: Callable[[], bool]) -> dict[str, float]:
    """Do 1 ms units of CPU work on this thread while ``busy()``; how late the units ran, worst and in all."""
    worst = total = 0.0
    units = 0
    while busy():
        start = time.perf_counter()
        end = time.thread_time() + 0.001
        while time.thread_time() < end:
            pass
        late = time.perf_counter() - start - 0.001
        worst, total, units = max(worst, late), total + max(0.0, late), units + 1
    return {"worst_ms": round(worst * 1000, 1), "added_ms": round(total * 1000, 1), "units": units}


def _gil_delay(fn: Callable[[], object]) -> dict[str, float]:
    """Run ``fn`` on a thread while this one does 1 ms units of CPU work; the worst and total delay."""
    done = threading.Event()

    def target() -> None:
        fn()
        done.set()

    thread = threading.Thread(target=target)
    thread.start()
    delay = _delay_while(lambda: not done.is_set())
    thread.join()
    return delay


def _process_delay(passes: ProcessPasses) -> dict[str, float]:
    """One pass in the pass process (the product's default) while this thread does 1 ms units of CPU work."""
    results: list[PassResult] = []

    def busy() -> bool:
        results.extend(passes.finished())
        return not results

    passes.start()
    return {**_delay_while(busy), "verdicts_read": results[0].processed}


def run(devices: int, verdicts: int, new: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = prepare_state(load_settings(None, environ={}, state_dir=Path(tmp)))
        pool = loadgen.KeyPool.make(8)
        enrol_bulk(settings.effective_database_url, devices, pool)
        factory = loadgen.EvidenceFactory(pool, Epoch(1, b"\x00" * 32, int(time.time())))
        evidence = [factory.make(i).payload for i in range(8)]
        keys = load_hub_keys(settings)
        store = open_store(settings)
        try:
            refs = References(keys.operator_keys)
            with store.reading() as conn:
                refs.load(store.latest_manifests(conn), store.latest_policies(conn))
            t0 = time.time() - verdicts / devices * INTERVAL_S - 3600
            _insert(store, _verdict_rows(0, verdicts, devices, evidence, t0))
            config = DetectorConfig(settle_s=0.0)
            out: dict[str, Any] = {"devices": devices, "verdicts": verdicts, "new": new}
            leader = AnomalyWatch(store, keys, refs, config, command_ttl_s=3600)
            out["first_pass"] = _timed(lambda: _catch_up(leader))  # at most batch_limit verdicts a pass
            print(f"first passes ({verdicts} verdicts, {devices} devices): {out['first_pass']}", flush=True)
            added = verdicts
            for label, incremental in (("incremental", True), ("full", False)):
                watch = AnomalyWatch(store, keys, refs, config, command_ttl_s=3600, incremental=incremental)
                watch.run_pass()  # the state is read (incremental) or as it is at every pass (full)
                quiet = _timed(watch.run_pass)
                _insert(store, _verdict_rows(added, new, devices, evidence, t0))
                added += new
                fresh = _timed(watch.run_pass)
                gil_quiet = _gil_delay(watch.run_pass)
                _insert(store, _verdict_rows(added, new, devices, evidence, t0))
                added += new
                gil_new = _gil_delay(watch.run_pass)
                out[label] = {"nothing_new": quiet, "with_new": fresh,
                              "thread_delay_nothing_new": gil_quiet, "thread_delay_with_new": gil_new}
                print(f"{label}: nothing new {quiet}, {new} new {fresh}; another thread delayed by "
                      f"{gil_quiet} / {gil_new}", flush=True)
            passes = ProcessPasses(replace(settings, anomaly_settle_s=0.0), "anomaly-bench")
            try:
                while _process_delay(passes)["verdicts_read"]:
                    pass  # its first passes read what is stored
                _insert(store, _verdict_rows(added, new, devices, evidence, t0))
                added += new
                out["process_delay_with_new"] = _process_delay(passes)
            finally:
                passes.close()
            print(f"pass process: this thread delayed by {out['process_delay_with_new']} ({new} new)", flush=True)
            return out
        finally:
            store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.anomaly", description=__doc__)
    parser.add_argument("--devices", type=int, default=4000)
    parser.add_argument("--verdicts", type=int, default=118_000)
    parser.add_argument("--new", type=int, default=6000, help="verdicts per pass (200/s for 30 s: 6,000)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    data = run(args.devices, args.verdicts, args.new)
    if args.out is not None:
        args.out.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
