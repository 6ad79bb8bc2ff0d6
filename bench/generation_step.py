"""``python -m bench.generation_step``: what one generation step costs the leader (a figure, not a test).

The leader steps the hub's generation every ``generation_period_s`` (hub/crypto/hubstate.py, restore detection):
one small database transaction, an owner-only rewrite of ``generation.json``, and a signed checkpoint published
retained on ``hub/generation`` (hub/server/announced.py). This times the transaction plus file write
(``step_generation``) and the COSE signature (``generation_message``) over ``--steps`` steps on a fresh hub,
SQLite by default or ``--database-url``; the publish is paho's enqueue (the PUBACK is not waited for). Writes
bench/results/generation-step-{sqlite,postgresql}.json and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from hub.config import load_settings
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import open_store, step_generation
from hub.server.announced import generation_message
from hub.server.localhub import prepare_state

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-generation-") as tmp:
        settings = prepare_state(load_settings(None, environ={}, state_dir=Path(tmp) / "hub",
                                               database_url=args.database_url))
        keys = load_hub_keys(settings)
        store = open_store(settings)
        step_ms, sign_ms = [], []
        try:
            for _ in range(args.steps):
                start = time.perf_counter()
                record = step_generation(settings, store)
                signed = time.perf_counter()
                generation_message(record.generation, record.epoch, int(time.time()), keys.signing_key, keys.kid)
                step_ms.append((signed - start) * 1000)
                sign_ms.append((time.perf_counter() - signed) * 1000)
        finally:
            store.close()
    backend = "postgresql" if args.database_url.startswith("postgresql") else "sqlite"
    figures = {"backend": backend, "steps": args.steps,
               "step_ms_median": round(statistics.median(step_ms), 3),
               "step_ms_p95": round(sorted(step_ms)[int(0.95 * len(step_ms))], 3),
               "sign_ms_median": round(statistics.median(sign_ms), 3)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"generation-step-{backend}.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
