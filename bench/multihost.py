"""Two hub hosts (network namespaces, loopback only) on one broker and one PostgreSQL: throughput of one host
vs both, and quarantine latency across hosts.

    sudo .venv/bin/python -m bench.multihost --devices 200 --rounds 5 --probes 6

Uses the set-up of tests/test_multihost.py (tests/multihost_env.py): Mosquitto with the dynamic-security
plugin and a fresh PostgreSQL database in this process's namespace, each host's ``attest-hub serve
--workers N`` in its own namespace reaching them through in-process TCP forwarders. Everything shares this
machine's cores, so the figures are ratios measured side by side in one run, not capacities.

1. Drain: host ``a`` alone, then ``a`` and ``b``: ``--rounds`` rounds of evidence from every device are
   queued while the hosts are paused (SIGSTOP; their sessions stay open), then the time from resuming them
   to the last verdict is taken, so the fleet's own publishing speed is not what is measured.
2. Quarantine across hosts: ``--probes`` devices that ignore commands each publish one tampered evidence
   while publishing telemetry back to back; the time from that evidence to the first telemetry PUBACK 0x87
   (the broker applying the role the deciding host gave it) is taken, and which host decided.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from device_sim.records import Profile
from tests.multihost_env import TwoHosts, make_two_hosts

NOT_AUTHORIZED = 0x87


def _wait(predicate: Any, timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def host_cpu_seconds(env: TwoHosts) -> float:
    """CPU seconds (user + system) used so far by every process of every hub host (by process group)."""
    groups = {proc.pid for host in env.hosts.values() for proc in host.procs}
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) in groups:  # pgrp
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def drain(env: TwoHosts, honest: list[Any], rounds: int, hosts: list[str]) -> dict[str, float]:
    """Queue ``rounds`` rounds of evidence from ``honest`` devices while ``hosts`` are paused (SIGSTOP: their
    sessions stay connected, the broker queues), resume them and time until every piece has a verdict."""
    start_count = len(env.verdict_keys())
    for name in hosts:
        env.hosts[name].pause()
    sent = 0
    try:
        for _ in range(rounds):
            for device in honest:
                sent += env.fleet.publish_device(device.device_id)
        env.fleet.flush(60)
    finally:
        t0, cpu0 = time.monotonic(), host_cpu_seconds(env)
        for name in hosts:
            env.hosts[name].pause(resume=True)
    if not _wait(lambda: len(env.verdict_keys()) >= start_count + sent, 300, poll=0.05):
        raise RuntimeError("not every evidence got a verdict in time")
    seconds = time.monotonic() - t0
    cpu_ms = (host_cpu_seconds(env) - cpu0) * 1000 / sent
    return {"evidence": sent, "seconds": round(seconds, 2), "per_second": round(sent / seconds, 1),
            "hub_cpu_ms_per_evidence": round(cpu_ms, 2)}


def quarantine_latency(env: TwoHosts, probes: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for device in probes:
        t0 = time.monotonic()
        env.fleet.publish_device(device.device_id)
        denied_at = None
        deadline = t0 + 30
        while time.monotonic() < deadline:
            codes = env.fleet.data_reason_codes(device.device_id)
            env.fleet.publish_device_data(device.device_id)
            env.fleet.flush(5)
            if NOT_AUTHORIZED in env.fleet.data_reason_codes(device.device_id)[len(codes):]:
                denied_at = time.monotonic()
                break
        senders = set(env.dynsec_senders(device.device_id))
        rows.append({"device": device.device_id, "ms": None if denied_at is None else round((denied_at - t0) * 1000),
                     "enforced_by": sorted({re.sub(r"-w\d+$", "", s) for s in senders})})
    return rows


def run(devices: int, rounds: int, probes: int, workers: int, keep: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="multihost-bench-") as tmp, ExitStack() as stack:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env = make_two_hosts(stack, work, f"honest:{devices},ignores-commands:{probes}", devices + probes,
                             workers=workers, start=("a",))
        if env.fleet.wait_for_epoch(20) is None:
            raise RuntimeError("no epoch from host a")
        honest = [d for d in env.fleet.devices if d.profile is Profile.HONEST]
        bad = [d for d in env.fleet.devices if d.profile is Profile.IGNORES_COMMANDS]
        drain(env, honest, 1, ["a"])  # warm-up: first-sight work (device rows, key cache) is not throughput
        one = drain(env, honest, rounds, ["a"])
        env.start("b")
        time.sleep(1.0)  # b's workers subscribe after their CONNECT
        drain(env, honest, 1, ["a", "b"])
        both = drain(env, honest, rounds, ["a", "b"])
        time.sleep(3.0)  # let the hosts publish the drain's results first: a probe should not queue behind them
        latency = quarantine_latency(env, bad)
    values = [r["ms"] for r in latency if r["ms"] is not None]
    return {
        "workers_per_host": workers, "devices": devices,
        "drain_one_host": one, "drain_two_hosts": both,
        "two_vs_one": round(both["per_second"] / one["per_second"], 2),
        "cpu_per_evidence_two_vs_one": round(both["hub_cpu_ms_per_evidence"] / one["hub_cpu_ms_per_evidence"], 2),
        "load_average": os.getloadavg(),
        "quarantine_across_hosts": latency,
        "quarantine_ms_median": statistics.median(values) if values else None,
        "quarantine_ms_max": max(values) if values else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--probes", type=int, default=6)
    parser.add_argument("--workers", type=int, default=1, help="workers per host")
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and state in this directory")
    args = parser.parse_args()
    print(json.dumps(run(args.devices, args.rounds, args.probes, args.workers, args.keep), indent=2))


if __name__ == "__main__":
    main()
