"""latest.json (every figure, the plan and the machine) and latest.md (a readable summary with the targets)."""

from __future__ import annotations

import time
from typing import Any

TARGETS = {
    "efficiency": ">= 0.6",
    "quarantine_latency_p99_ms": "< 50 at 1,000 evidence/s",
    "flat_scaling": "p99 latency and memory per worker flat from 10,000 to 1,000,000 enrolled devices",
    "worker_scaling": "throughput grows with workers up to the cores",
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
    out["by_enrolled"] = [
        {"enrolled_devices": s["enrolled_devices"], "p99_latency_ms": s["latency_ms"]["p99"],
         "p50_latency_ms": s["latency_ms"]["p50"], "rss_mb_per_worker": s["worker_rss_mb"],
         "quarantine_p99_ms": s["quarantine_ms"]["p99"]}
        for s in db["scale"]
    ]
    return out


def _verdicts(raw: float, heads: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    verdicts: dict[str, dict[str, Any]] = {}
    for name, head in heads.items():
        scale = head["by_enrolled"]
        flat_latency = flat_memory = None
        if len(scale) == 2:
            a, b = scale
            flat_latency = b["p99_latency_ms"] <= max(2 * a["p99_latency_ms"], a["p99_latency_ms"] + 10)
            flat_memory = max(b["rss_mb_per_worker"] or [0]) <= 1.25 * max(a["rss_mb_per_worker"] or [1])
        tp = sorted(head["throughput"], key=lambda t: t["workers"])
        verdicts[name] = {
            "efficiency": {"value": head["efficiency"], "met": head["efficiency"] >= 0.6},
            "quarantine_latency_p99_ms": {"value": head.get("quarantine_latency_ms", {}).get("p99"),
                                          "met": (head.get("quarantine_latency_ms", {}).get("p99") or 1e9) < 50},
            "flat_scaling": {"latency_met": flat_latency, "memory_met": flat_memory},
            "worker_scaling": {"value": [t["per_s"] for t in tp],
                               "met": len(tp) > 1 and tp[-1]["per_s"] > 1.2 * tp[0]["per_s"]},
        }
    return verdicts


def assemble(raw: float, databases: dict[str, Any], plan: dict[str, Any], machine: dict[str, Any], *, quick: bool,
             seconds: float) -> dict[str, Any]:
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
        "target_verdicts": _verdicts(raw, heads),
        "databases": databases,
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
    lines += ["", "Targets:", ""]
    for name, verdict in data["target_verdicts"].items():
        for target, v in verdict.items():
            lines.append(f"- {name} {target} ({data['targets'][target]}): {v}")
    return "\n".join(lines) + "\n"
