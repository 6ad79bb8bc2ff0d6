"""``python -m bench.cli_list``: how long ``attest-hub device list`` takes for a large fleet (a figure, not a test).

Enrols ``--devices`` (default 10,000) into a fresh SQLite state, gives each a last-seen time and a problem, then
runs the installed ``attest-hub`` as a user would (a new process each time, so start-up is included): the table
at 80 columns, ``--json``, and one 500-device page. Writes bench/results/cli-list.json and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import loadgen
from bench.stage import enrol_bulk
from hub.config import load_settings
from hub.server.localhub import prepare_state
from hub.store import Store
from hub.store.db import DEVICES

RESULTS = Path(__file__).resolve().parent / "results"
HUB = str(Path(sys.executable).parent / "attest-hub")


def _timed(args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system of the child: less sensitive to a busy machine), output bytes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([HUB, *args], env=env, capture_output=True, check=True).stdout
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), len(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    devices = parser.parse_args().devices
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        state = Path(tmp) / "hub"
        settings = prepare_state(load_settings(None, environ={}, state_dir=state))
        url = settings.effective_database_url
        enrol_bulk(url, devices, loadgen.KeyPool.make(8))
        store = Store(url)
        with store.transaction() as conn:
            problems = json.dumps(["data-gap: batches 3..4 were not received"])
            conn.execute(DEVICES.update().values(last_seen=time.time() - 60, status="warning",
                                                 firmware_version="1.2.0", last_problems=problems))
        store.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTEST_HUB_")}
        env.update(ATTEST_HUB_STATE_DIR=str(state), COLUMNS="80")
        cases = {"table": ["device", "list"], "json": ["device", "list", "--json"],
                 "page_500": ["device", "list", "--limit", "500", "--after", loadgen.device_id(devices // 2)],
                 "version_only": ["--version"]}
        figures: dict[str, dict[str, float]] = {}
        for name, args in cases.items():
            times, cpus = [], []
            size = 0
            for _ in range(runs):
                seconds, cpu, size = _timed(args, env)
                times.append(seconds)
                cpus.append(cpu)
            figures[name] = {"best_s": round(min(times), 3), "median_s": round(sorted(times)[len(times) // 2], 3),
                             "best_cpu_s": round(min(cpus), 3), "output_bytes": size}
    result = {"devices": devices, "runs": runs, "figures": figures}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli-list.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, fig in figures.items():
        print(f"{name:>13}: best {fig['best_s']:.2f} s, median {fig['median_s']:.2f} s, "
              f"CPU {fig['best_cpu_s']:.2f} s, {fig['output_bytes']:,} bytes")


if __name__ == "__main__":
    main()
