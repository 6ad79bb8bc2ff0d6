"""latest.json (every figure, the plan and the machine) and latest.md (a readable summary with the targets)."""

from __future__ import annotations

import time
from typing import Any

TARGETS = {
    "efficiency": ">= 0.3 (verified per hub CPU-second / raw ES256 verifies per CPU-second, same run)",
    "quiet_fleet_cpu": "CPU per evidence at the low rate, 1 worker, <= 1.5 x the saturated (drain, 1 worker) figure",
    "quarantine_latency_p99_ms": "< 50 at the high rate (1,000/s in the full run)",
    "quarantine_latency_low_rate_p99_ms": "< 20 at the low rate (200/s in the full run)",
    "worker_scaling": "drain throughput with 2 workers >= 1.6 x one worker",
    "rss_per_active_device": "<= 1 KB of worker RSS per active device at 100k active devices (bench/memory.py: "
                             "in-process Pipeline on SQLite; 1,024 bytes)",
    "flat_scaling": "p99 latency and memory per worker flat from the small to the large enrolled fleet",
    "anomaly_pass": "off the evidence thread, never delays a batch: a pass with new verdicts adds <= 5 ms in all "
                    "to a thread doing evidence-sized work units (bench/anomaly.py; the pass in its own process, "
                    "anomaly_process = true; the figure on a thread beside it for comparison)",
}


def _headline(raw: float, db: dict[str, Any]) -> dict[str, Any]:
    drains = db["drain"]
    one = next((d for d in drains if d["workers"] == 1), drains[0] if drains else None)
    best = max(drains, key=lambda d: d["throughput_per_s"]) if drains else None
    small = db["scale"][0] if db["scale"] else None
    per_cpu = one["hub_verified_per_cpu_s"] if one else 0.0
    out: dict[str, Any] = {
        "hub_verified_per_cpu_s": per_cpu,
        "efficiency": round(per_cpu / raw, 3) if raw else 0.0,
        "throughput": [{"workers": d["workers"], "per_s": d["throughput_per_s"]} for d in drains],
        "throughput_best": {"workers": best["workers"], "per_s": best["throughput_per_s"]} if best else None,
    }
    if small is not None:
        out["quarantine_latency_ms"] = {k: small["quarantine_ms"][k] for k in ("p50", "p99")}
        out["steady_rate_per_s"] = small["rate"]
    low = db.get("low_rate")
    if low is not None:
        cpu_us = round(low["hub_cpu_per_s"] / low["rate"] * 1e6, 1) if low["rate"] else None
        out["low_rate"] = {"rate_per_s": low["rate"], "workers": 1, "cpu_us_per_evidence": cpu_us,
                           "quarantine_ms": {k: low["quarantine_ms"][k] for k in ("p50", "p99")}}
    for key, value in db.items():  # the same quiet fleet on the steady phases' workers, for comparison
        if key.startswith("low_rate_") and key.endswith("_workers") and value and value["rate"]:
            out[key] = {"rate_per_s": value["rate"],
                        "cpu_us_per_evidence": round(value["hub_cpu_per_s"] / value["rate"] * 1e6, 1),
                        "quarantine_ms": {k: value["quarantine_ms"][k] for k in ("p50", "p99")}}
    out["saturated_cpu_us_per_evidence"] = round(1e6 / per_cpu, 1) if per_cpu else None
    out["by_enrolled"] = [
        {"enrolled_devices": s["enrolled_devices"], "p99_latency_ms": s["latency_ms"]["p99"],
         "p50_latency_ms": s["latency_ms"]["p50"], "rss_mb_per_worker": s["worker_rss_mb"],
         "quarantine_p99_ms": s["quarantine_ms"]["p99"]}
        for s in db["scale"]
    ]
    return out


def _met(value: float | None, ok: bool) -> dict[str, Any]:
    return {"value": value, "met": None if value is None else ok}


def _verdicts(raw: float, heads: dict[str, dict[str, Any]], memory: dict[str, Any] | None = None,
              anomaly: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    verdicts: dict[str, dict[str, Any]] = {}
    for name, head in heads.items():
        scale = head["by_enrolled"]
        flat_latency = flat_memory = None
        if len(scale) == 2:
            a, b = scale
            flat_latency = b["p99_latency_ms"] <= max(2 * a["p99_latency_ms"], a["p99_latency_ms"] + 10)
            flat_memory = max(b["rss_mb_per_worker"] or [0]) <= 1.25 * max(a["rss_mb_per_worker"] or [1])
        tp = sorted(head["throughput"], key=lambda t: t["workers"])
        ratio = round(tp[-1]["per_s"] / tp[0]["per_s"], 2) if len(tp) > 1 and tp[0]["per_s"] else None
        low = head.get("low_rate") or {}
        quiet = (round(low["cpu_us_per_evidence"] / head["saturated_cpu_us_per_evidence"], 2)
                 if low.get("cpu_us_per_evidence") and head.get("saturated_cpu_us_per_evidence") else None)
        q_high = head.get("quarantine_latency_ms", {}).get("p99")
        q_low = (low.get("quarantine_ms") or {}).get("p99")
        verdicts[name] = {
            "efficiency": _met(head["efficiency"], head["efficiency"] >= 0.3),
            "quiet_fleet_cpu": _met(quiet, quiet is not None and quiet <= 1.5),
            "quarantine_latency_p99_ms": _met(q_high, q_high is not None and q_high < 50),
            "quarantine_latency_low_rate_p99_ms": _met(q_low, q_low is not None and q_low < 20),
            "worker_scaling": _met(ratio, ratio is not None and ratio >= 1.6),
            "rss_per_active_device": _memory_verdict(name, memory),
            "flat_scaling": {"value": [row["p99_latency_ms"] for row in scale],
                             "latency_met": flat_latency, "memory_met": flat_memory,
                             "met": None if flat_latency is None else bool(flat_latency and flat_memory)},
            "anomaly_pass": _anomaly_verdict(anomaly),
        }
    return verdicts


def _anomaly_verdict(anomaly: dict[str, Any] | None) -> dict[str, Any]:
    """The delay a pass over ``new`` verdicts adds to another thread: in its own process (the product) and on a
    thread of the same process (for comparison); measured on SQLite, the pass's cost does not depend on it."""
    if not anomaly or "process_delay_with_new" not in anomaly:
        return {"value": None, "met": None}
    process = anomaly["process_delay_with_new"]["added_ms"]
    thread = anomaly["incremental"]["thread_delay_with_new"]["added_ms"]
    return {"value": f"{process} ms added in its own process, {thread} ms on a thread ({anomaly['new']:,} new "
                     f"verdicts, {anomaly['devices']:,} devices)", "met": process <= 5.0}


def _memory_verdict(store: str, memory: dict[str, Any] | None) -> dict[str, Any]:
    """bench/memory.py runs on SQLite only; at fewer than 100,000 devices the figure is indicative."""
    if memory is None or store != "sqlite":
        return {"value": None, "met": None}
    return {"value": f"{memory['bytes_per_active_device']} B at {memory['devices']:,} devices",
            "met": memory["bytes_per_active_device"] <= memory["target_bytes"]}


def assemble(raw: float, databases: dict[str, Any], plan: dict[str, Any], machine: dict[str, Any], *, quick: bool,
             seconds: float, stages: dict[str, Any] | None = None,
             memory: dict[str, Any] | None = None, anomaly: dict[str, Any] | None = None) -> dict[str, Any]:
    heads = {name: _headline(raw, db) for name, db in databases.items()}
    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": quick,
        "run_seconds": round(seconds, 1),
        "machine": machine,
        "plan": plan,
        "raw_verify_per_cpu_s": round(raw, 1),
        "summary": heads,
        "targets": TARGETS,
        "target_verdicts": _verdicts(raw, heads, memory, anomaly),
        "databases": databases,
        "stages": stages or {},
        "memory": memory or {},
        "anomaly": anomaly or {},
    }


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"# Benchmark results{' (quick scale: not the figures of record)' if data['quick'] else ''}",
        "",
        f"{data['generated_at']}, {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, Python {m['python']}; "
        f"run took {data['run_seconds']:.0f}s.",
        "",
        f"Raw ES256 verify (cryptography alone, one core): **{data['raw_verify_per_cpu_s']:.0f} per CPU-second**.",
        "",
        "| store | verified/CPU-s | efficiency | throughput (workers: /s) | quarantine p50 / p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, head in data["summary"].items():
        q = head.get("quarantine_latency_ms", {})
        tp = ", ".join(f"{t['workers']}: {t['per_s']:.0f}" for t in head["throughput"])
        lines.append(f"| {name} | {head['hub_verified_per_cpu_s']:.0f} | {head['efficiency']:.2f} | {tp} | "
                     f"{q.get('p50')} / {q.get('p99')} |")
    lines += ["", "| store | enrolled | evidence p50 / p99 ms | RSS per worker MB | quarantine p99 ms |",
              "|---|---|---|---|---|"]
    for name, head in data["summary"].items():
        for row in head["by_enrolled"]:
            lines.append(f"| {name} | {row['enrolled_devices']:,} | {row['p50_latency_ms']} / {row['p99_latency_ms']} "
                         f"| {', '.join(str(r) for r in row['rss_mb_per_worker'])} | {row['quarantine_p99_ms']} |")
    lines += ["", "## Targets", "", "| store | target | figure | met |", "|---|---|---|---|"]
    for name, verdict in data["target_verdicts"].items():
        for target, v in verdict.items():
            met = {True: "met", False: "missed", None: "not measured"}[v.get("met")]
            lines.append(f"| {name} | {target}: {data['targets'][target]} | {v.get('value')} | {met} |")
    mem = data.get("memory") or {}
    if mem:
        lines += ["", f"## Memory per active device (bench/memory.py, in-process, SQLite, {mem['devices']:,} devices)",
                  "", f"{mem['bytes_per_active_device']:,} bytes of RSS per active device (target <= "
                  f"{mem['target_bytes']:,}); RSS {mem['rss_before_mb']} -> {mem['rss_after_mb']} MB; entries "
                  f"{mem['structure_entries']}."]
    stage_table = data.get("stages") or {}
    if stage_table:
        table = stage_table["us_per_evidence"]
        lines += ["", "## Per stage (in-process, SQLite, µs of CPU per evidence; bare verify measured in the same run)",
                  "", "| stage | µs | x bare verify |", "|---|---|---|"]
        for stage, us in table.items():
            lines.append(f"| {stage} | {us:.0f} | {us / stage_table['bare_verify_us']:.2f} |")
        lines.append(f"| bare ES256 verify / sign | {stage_table['bare_verify_us']:.0f} / "
                     f"{stage_table['bare_sign_us']:.0f} | 1.00 |")
    lines += _thread_table(data)
    return "\n".join(lines) + "\n"


def _thread_table(data: dict[str, Any]) -> list[str]:
    """The whole hub's CPU per evidence by thread (bench/hubproc.py THREAD_ROLES), one worker: saturated (the
    drain) and at the low rate (the quiet fleet). Where the time outside the in-process stages goes, and what
    the quiet fleet pays that the drain does not."""
    columns: dict[str, dict[str, float]] = {}
    for name, db in data["databases"].items():
        one = next((d for d in db.get("drain", []) if d["workers"] == 1 and d.get("thread_cpu_s")), None)
        if one is not None and one["messages"]:
            columns[f"{name}, drain"] = _per_evidence(one["thread_cpu_s"], one["hub_cpu_s"], one["messages"])
        low = db.get("low_rate")
        if low and low.get("thread_cpu_s") and low["rate"] and low["seconds"]:
            evidence = low["rate"] * low["seconds"]
            columns[f"{name}, {low['rate']:.0f}/s"] = _per_evidence(
                low["thread_cpu_s"], low["hub_cpu_per_s"] * low["seconds"], evidence)
    if not columns:
        return []
    raw = data["raw_verify_per_cpu_s"]
    bare = 1e6 / raw if raw else 0.0
    names = list(columns)
    lines = ["", "## Whole hub, by thread (1 worker: the drain and the low rate; µs of CPU per evidence; /proc "
             "per-thread times)", "",
             "| thread | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for role in next(iter(columns.values())):
        lines.append(f"| {role} | " + " | ".join(f"{columns[n].get(role, 0.0):.0f}" for n in names) + " |")
    lines.append("| raw ES256 verify (same run) | " + " | ".join(f"{bare:.0f}" for _ in names) + " |")
    return lines


def _per_evidence(thread_cpu_s: dict[str, float], hub_cpu_s: float, evidence: float) -> dict[str, float]:
    row = {role: s * 1e6 / evidence for role, s in thread_cpu_s.items()}
    whole = hub_cpu_s * 1e6 / evidence
    row["threads that ended meanwhile"] = max(0.0, whole - sum(row.values()))
    row["whole hub"] = whole
    return row
