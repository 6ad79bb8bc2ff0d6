"""``python -m bench.storage``: database bytes per message kind, and an hour of one hostile device.

In process: the hub's own pipeline (``hub.appraisal.pipeline.Pipeline``, with the per-device rate
limiter and the storage settings a worker uses) on SQLite, the embedded default, in a temporary state
directory; evidence made by the device simulator. There is no broker: it does not change what is stored.
Bytes are the growth of the database file (``page_count * page_size`` after a WAL checkpoint, so
indexes and the audit chain are included) divided by the messages sent.

Kinds measured: honest evidence; rejected authenticated evidence (signed replays below the device's
high-water mark, stored with their bytes); rejected unauthenticated evidence (64 KiB of garbage, over
the size limit: stored as hash and length) within the per-device row budget; the same over the budget
(counted only); evidence for device ids that are not enrolled. Then one hostile device at the default
rate limit (20 messages/s) for ``minutes`` minutes of hub clock, extrapolated linearly to an hour: the
garbage device of the report that led to this (64 KiB each), and a device that signs its flood (small
replays, and replays near the 16 KiB limit).

Figures are reported, never asserted (docs/RELIABILITY.md#bounded-storage).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_sim import firmware
from device_sim.device import SimDevice
from device_sim.evidence import EvidenceClaims, sign_evidence
from hub import wire
from hub.appraisal.operations import Enrolment
from hub.appraisal.pipeline import Pipeline
from hub.appraisal.ratelimit import RateLimiter
from hub.appraisal.storage import RejectionTally, StorageRules
from hub.config import Settings, load_settings
from hub.crypto.freshness import epoch_nonce
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import open_store
from hub.envelope import Incoming
from hub.reference.values import References
from hub.schemes import SchemeRegistry, default_schemes
from hub.server.localhub import enrol_all, prepare_state

RESULTS = Path(__file__).resolve().parent / "results"
GARBAGE = 64 * 1024
EPOCH = 7


@dataclass(frozen=True)
class Plan:
    per_kind: int  # messages per kind
    minutes: float  # hostile-device run, in minutes of hub clock


FULL = Plan(2000, 10.0)
QUICK = Plan(300, 2.0)
TINY = Plan(40, 0.5)  # tests/test_bench_storage.py


class Bed:
    """One hub state (SQLite), ``devices`` enrolled, a pipeline with a settable clock."""

    def __init__(self, work: Path, devices: int) -> None:
        settings = prepare_state(load_settings(None, environ={}, state_dir=work / "hub", epoch_period_s=300.0))
        self.settings: Settings = settings
        self.devices = [SimDevice(f"smart-meter-{i:05d}", firmware.SMART_METER, seed="bench-storage")
                        for i in range(devices)]
        enrol_all(settings, [Enrolment(d.device_id, d.device_class, d.public_key_pem.decode(), d.ueid)
                             for d in self.devices])
        self.keys = load_hub_keys(settings)
        self.store = open_store(settings)
        references = References(self.keys.operator_keys)
        with self.store.transaction() as conn:
            references.load(self.store.latest_manifests(conn), self.store.latest_policies(conn))
            self.store.set_state(conn, "epoch", str(EPOCH))
        self.nonce = epoch_nonce(self.keys.nonce_secret, EPOCH)
        self.now = time.time()
        self.pipeline = Pipeline(self.store, SchemeRegistry(default_schemes()), self.keys, references,
                                 rate_limiter=RateLimiter(settings.device_rate_per_s, settings.device_burst),
                                 clock=lambda: self.now)
        self.pipeline.decider.storage = StorageRules(settings.max_evidence_bytes, settings.rejected_rows_per_min,
                                                     settings.rejected_bytes_per_min)
        self.pipeline.decider.rejections = RejectionTally(settings.rejected_rows_per_min,
                                                          settings.rejected_bytes_per_min)
        self.path = settings.state_dir / "hub.db"

    def size(self) -> int:
        """Bytes of the database after folding the WAL into it."""
        conn = sqlite3.connect(self.path)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            return int(pages) * int(page)
        finally:
            conn.close()

    def send(self, messages: Sequence[tuple[str, bytes]], *, step_s: float = 0.0, batch: int = 256) -> None:
        for start in range(0, len(messages), batch):
            chunk = messages[start:start + batch]
            incoming = []
            for device_id, payload in chunk:
                self.now += step_s
                incoming.append(Incoming(wire.device_topic(device_id, wire.EVIDENCE), payload,
                                         wire.FIRMWARE_MEDIA_TYPE))
            self.pipeline.process(incoming)

    def verdicts(self) -> int:
        with self.store.reading() as conn:
            return self.store.count_verdicts(conn)

    def close(self) -> None:
        self.store.close()


def measure(bed: Bed, messages: Sequence[tuple[str, bytes]], **send: Any) -> dict[str, Any]:
    before, rows = bed.size(), bed.verdicts()
    bed.send(messages, **send)
    grown = bed.size() - before
    return {"messages": len(messages), "bytes": grown, "bytes_per_message": round(grown / len(messages), 1),
            "verdict_rows": bed.verdicts() - rows,
            "message_bytes": round(sum(len(p) for _, p in messages) / len(messages), 1)}


def per_kind(work: Path, n: int) -> dict[str, dict[str, Any]]:
    bed = Bed(work / "kinds", n)
    try:
        out: dict[str, dict[str, Any]] = {}
        honest = [(d.device_id, d.make_evidence(bed.nonce)) for d in bed.devices]
        withheld = [(d.device_id, d.make_evidence(bed.nonce)) for d in bed.devices]
        newer = [(d.device_id, d.make_evidence(bed.nonce)) for d in bed.devices]
        out["honest"] = measure(bed, honest, step_s=0.001)
        bed.send(newer, step_s=0.001)  # withheld evidence is now below each device's high-water mark
        out["rejected_authenticated"] = measure(bed, withheld, step_s=0.001)
        garbage = [(d.device_id, os.urandom(GARBAGE)) for d in bed.devices]
        out["rejected_unauthenticated"] = measure(bed, garbage, step_s=0.001)
        one = bed.devices[0].device_id
        bed.now += 60
        bed.send([(one, os.urandom(GARBAGE)) for _ in range(bed.settings.rejected_rows_per_min)])  # budget used
        out["rejected_unauthenticated_over_budget"] = measure(bed, [(one, os.urandom(GARBAGE)) for _ in range(n)])
        out["unknown_device"] = measure(bed, [(f"random-{os.urandom(6).hex()}", os.urandom(512)) for _ in range(n)],
                                        step_s=0.001)
        return out
    finally:
        bed.close()


def hostile_hour(work: Path, minutes: float, make: Callable[[Bed, SimDevice, int], list[bytes]]) -> dict[str, Any]:
    """One enrolled device at the rate limit for ``minutes`` of hub clock, extrapolated to 60 minutes."""
    bed = Bed(work, 20)
    try:
        device = bed.devices[0]
        rate = bed.settings.device_rate_per_s
        count = int(rate * 60 * minutes)
        payloads = make(bed, device, count)
        started = time.perf_counter()
        # 10 messages a batch: half a second of arrivals, as a worker batching every few ms sees them
        result = measure(bed, [(device.device_id, p) for p in payloads], step_s=1.0 / rate, batch=10)
        result.update(minutes_of_hub_clock=minutes, rate_per_s=rate,
                      wall_seconds=round(time.perf_counter() - started, 1),
                      extrapolated_hour_mb=round(result["bytes"] * 60 / minutes / 1e6, 2))
        return result
    finally:
        bed.close()


def _garbage(_bed: Bed, _device: SimDevice, count: int) -> list[bytes]:
    return [os.urandom(GARBAGE) for _ in range(count)]


def _signed_replays(bed: Bed, device: SimDevice, count: int) -> list[bytes]:
    """Distinct evidence the device signed, sent after a newer one: each a replay, authenticated."""
    withheld = [device.make_evidence(bed.nonce) for _ in range(count)]
    bed.send([(device.device_id, device.make_evidence(bed.nonce))])
    return withheld


def _large_signed_replays(bed: Bed, device: SimDevice, count: int) -> list[bytes]:
    """As ``_signed_replays``, each near the firmware scheme's 16 KiB limit (a 15,000-character name)."""
    def sign(seq: int) -> bytes:
        claims = EvidenceClaims(device_class=device.device_class, ueid=device.ueid, nonce=bed.nonce,
                                bootcount=device.bootcount, seq=seq, iat=int(bed.now),
                                sw_name=firmware.sw_name(device.device_class) + " " + "x" * 15_000,
                                sw_version=device.release.version, measurements=device._measurements)
        return sign_evidence(claims, device._signing_key, device.device_id)  # the device's own key: authenticated

    bed.send([(device.device_id, sign(count + 1))])
    return [sign(seq) for seq in range(1, count + 1)]


def run(plan: Plan, work: Path) -> dict[str, Any]:
    settings = Settings()
    return {
        "settings": {"max_evidence_bytes": settings.max_evidence_bytes, "device_rate_per_s": settings.device_rate_per_s,
                     "rejected_rows_per_min": settings.rejected_rows_per_min,
                     "rejected_bytes_per_min": settings.rejected_bytes_per_min},
        "per_kind": per_kind(work, plan.per_kind),
        "hostile_garbage": hostile_hour(work / "garbage", plan.minutes, _garbage),
        "hostile_signed": hostile_hour(work / "signed", plan.minutes, _signed_replays),
        "hostile_signed_large": hostile_hour(work / "signed-large", plan.minutes, _large_signed_replays),
    }


def markdown(data: dict[str, Any]) -> str:
    lines = ["# Storage benchmark", "",
             f"SQLite, settings {data['settings']}; bytes = database growth / messages.", "",
             "| kind | messages | message bytes | verdict rows | database bytes per message |", "|---|---|---|---|---|"]
    for kind, row in data["per_kind"].items():
        lines.append(f"| {kind} | {row['messages']} | {row['message_bytes']:.0f} | {row['verdict_rows']} | "
                     f"{row['bytes_per_message']:.0f} |")
    lines += ["", "| one hostile device at the rate limit | minutes run (hub clock) | messages | verdict rows | "
              "MB in an hour (extrapolated) |", "|---|---|---|---|---|"]
    for kind in ("hostile_garbage", "hostile_signed", "hostile_signed_large"):
        row = data[kind]
        lines.append(f"| {kind} | {row['minutes_of_hub_clock']} | {row['messages']} | {row['verdict_rows']} | "
                     f"{row['extrapolated_hour_mb']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.storage", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer messages, a shorter hostile run")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    args = parser.parse_args(argv)
    plan = TINY if args.tiny else QUICK if args.quick else FULL
    out_dir = args.out or (RESULTS / "quick" if args.quick or args.tiny else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="attest-bench-storage-"))
    try:
        data = run(plan, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data["plan"] = {"per_kind": plan.per_kind, "minutes": plan.minutes}
    (out_dir / "storage.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (out_dir / "storage.md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
