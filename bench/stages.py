"""µs of CPU per evidence by stage of ``Pipeline.process``, with bare ES256 verify measured in the same run.

``python -m bench.stages`` (and ``make bench``) feeds honest firmware evidence in batches to an in-process
pipeline on SQLite (no broker) and times each stage with the thread's CPU clock around the functions that
make it up, so the next change can be aimed. Stages, per evidence:

* ``verify``: the scheme's ``verify`` (COSE decode, ES256 verify, payload decode, claims typing);
* ``sign``: the result (and any command) signature;
* ``commit``: the write transaction (locked re-read, check, executemany writes, commit);
* ``decide``: everything else of the decision outside the lock (the unlocked reads, dedup, freshness,
  appraisal, transitions, result claims);
* ``route``: topic parsing and rate limit, anchors (the rest of ``process``).

Figures are reported, never asserted; on a shared machine quote the ratio to bare verify.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.micro import _crypto_us
from device_sim.profiles import build_fleet
from hub import wire
from hub.appraisal.operations import Enrolment
from hub.appraisal.pipeline import Pipeline
from hub.config import load_settings
from hub.crypto.freshness import epoch_nonce
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import open_store
from hub.envelope import Incoming
from hub.reference.values import References
from hub.schemes import SchemeRegistry, default_schemes
from hub.server.localhub import enrol_all, prepare_state

STAGES = ("route", "verify", "decide", "sign", "commit")


class _Clock:
    """CPU seconds spent inside wrapped calls, by stage (nested calls are charged to the inner stage only)."""

    def __init__(self) -> None:
        self.spent = dict.fromkeys(STAGES, 0.0)
        self._stack: list[tuple[str, float]] = []

    def wrap(self, stage: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._enter(stage)
            try:
                return func(*args, **kwargs)
            finally:
                self._leave()
        return timed

    @contextmanager
    def span(self, stage: str, inner: Any) -> Iterator[Any]:
        self._enter(stage)
        try:
            with inner as value:
                yield value
        finally:
            self._leave()

    def _enter(self, stage: str) -> None:
        now = time.thread_time()
        if self._stack:
            outer, since = self._stack[-1]
            self.spent[outer] += now - since
        self._stack.append((stage, now))

    def _leave(self) -> None:
        now = time.thread_time()
        stage, since = self._stack.pop()
        self.spent[stage] += now - since
        if self._stack:
            outer, _ = self._stack[-1]
            self._stack[-1] = (outer, now)


def measure(devices: int = 256, per_device: int = 8, batch: int = 256) -> dict[str, float]:
    """µs per evidence by stage (and ``total``), one fresh SQLite hub; the first batch warms up."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = prepare_state(load_settings(None, environ={}, state_dir=Path(tmp)))
        fleet = build_fleet(devices, "honest:1", seed="stages")
        enrol_all(settings, [Enrolment(d.device_id, d.device_class, d.public_key_pem.decode(), d.ueid)
                             for d in fleet])
        keys = load_hub_keys(settings)
        store = open_store(settings)
        try:
            with store.transaction() as conn:
                store.set_state(conn, "epoch", "1")
            refs = References(keys.operator_keys)
            with store.reading() as conn:
                refs.load(store.latest_manifests(conn), store.latest_policies(conn))
            pipeline = Pipeline(store, SchemeRegistry(default_schemes()), keys, refs)
            nonce = epoch_nonce(keys.nonce_secret, 1)
            messages = [Incoming(wire.device_topic(d.device_id, wire.EVIDENCE), d.make_evidence(nonce),
                                 wire.FIRMWARE_MEDIA_TYPE) for _ in range(per_device) for d in fleet]
            batches = [messages[i:i + batch] for i in range(0, len(messages), batch)]
            pipeline.process(batches[0])
            clock = _Clock()
            _wrap_schemes(pipeline, clock)
            decider = pipeline.decider
            for signer in (decider._result_signer, decider._command_signer):
                signer.sign = clock.wrap("sign", signer.sign)  # type: ignore[method-assign]
            transaction = store.transaction
            store.transaction = lambda: clock.span("commit", transaction())  # type: ignore[method-assign]
            decide = pipeline._decide
            pipeline._decide = clock.wrap("decide", decide)  # type: ignore[method-assign]
            reading = store.reading
            store.reading = lambda: clock.span("decide", reading())  # type: ignore[method-assign]
            process = clock.wrap("route", pipeline.process)
            count = 0
            for item in batches[1:]:
                process(item)
                count += len(item)
        finally:
            store.close()
    per = {stage: clock.spent[stage] / count * 1e6 for stage in STAGES}
    per["total"] = sum(per.values())
    return per


def _wrap_schemes(pipeline: Pipeline, clock: _Clock) -> None:
    seen: set[int] = set()
    for media in (wire.FIRMWARE_MEDIA_TYPE,):
        scheme = pipeline.registry.find(media, wire.EVIDENCE)
        if scheme is not None and id(scheme) not in seen:
            seen.add(id(scheme))
            scheme.verify = clock.wrap("verify", scheme.verify)  # type: ignore[method-assign]


def run(rounds: int = 3, **kwargs: int) -> dict[str, Any]:
    """Median per stage over ``rounds``, and bare ES256 verify and sign measured between them."""
    results, crypto = [], []
    for _ in range(rounds):
        results.append(measure(**kwargs))
        crypto.append(_crypto_us())
    table = {stage: round(statistics.median(r[stage] for r in results), 1) for stage in (*STAGES, "total")}
    verify = statistics.median(c[0] for c in crypto)
    sign = statistics.median(c[1] for c in crypto)
    return {"us_per_evidence": table, "bare_verify_us": round(verify, 1), "bare_sign_us": round(sign, 1),
            "ratio_to_bare_verify": round(table["total"] / verify, 2),
            "in_process_efficiency": round(verify / table["total"], 3), "rounds": rounds, **kwargs}


def markdown(data: dict[str, Any]) -> str:
    table = data["us_per_evidence"]
    lines = ["| stage | µs per evidence | x bare verify |", "|---|---|---|"]
    for stage in (*STAGES, "total"):
        lines.append(f"| {stage} | {table[stage]:.0f} | {table[stage] / data['bare_verify_us']:.2f} |")
    lines.append(f"| bare ES256 verify / sign (same run) | {data['bare_verify_us']:.0f} / {data['bare_sign_us']:.0f} "
                 f"| 1.00 |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__)
    parser.add_argument("--devices", type=int, default=256)
    parser.add_argument("--per-device", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    data = run(args.rounds, devices=args.devices, per_device=args.per_device, batch=args.batch)
    print(markdown(data))
    print(f"in-process efficiency (bare verify / evidence): {data['in_process_efficiency']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
