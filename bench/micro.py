"""CPU per evidence inside ``Pipeline.process`` alone: no broker, no publish, SQLite in a temporary directory.

``python -m bench.micro`` prints the median µs per message over several rounds
(each round: fresh state, ``--devices`` honest devices, ``--rounds-of-evidence``
evidence each, batches of ``--batch``; the first batch warms up and is not
counted) and the same figure for bare ES256 verify and sign, so the share the
two signatures take of the hub's work can be read off. ``--profile`` prints a
cProfile listing of one round instead. Figures are reported, never asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

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


def _round(devices: int, per_device: int, batch: int, profile: cProfile.Profile | None) -> float:
    """One fresh hub state; µs of CPU per message over all batches but the first."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = prepare_state(load_settings(None, environ={}, state_dir=Path(tmp)))
        fleet = build_fleet(devices, "honest:1", seed="micro")
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
            start = time.process_time()
            if profile is not None:
                profile.enable()
            for item in batches[1:]:
                pipeline.process(item)
            if profile is not None:
                profile.disable()
            spent = time.process_time() - start
        finally:
            store.close()
    return spent / sum(len(b) for b in batches[1:]) * 1e6


def _crypto_us(count: int = 2000) -> tuple[float, float]:
    """µs of CPU per bare ES256 verify and per sign of ~300 bytes."""
    key = ec.generate_private_key(ec.SECP256R1())
    algorithm = ec.ECDSA(hashes.SHA256())
    message = b"x" * 300
    start = time.process_time()
    signatures = [key.sign(message, algorithm) for _ in range(count)]
    sign = time.process_time() - start
    public = key.public_key()
    start = time.process_time()
    for signature in signatures:
        public.verify(signature, message, algorithm)
    verify = time.process_time() - start
    return verify / count * 1e6, sign / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__)
    parser.add_argument("--devices", type=int, default=512)
    parser.add_argument("--rounds-of-evidence", type=int, default=8, help="evidence per device")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print a cProfile listing of one round")
    args = parser.parse_args(argv)
    if args.profile:
        profile = cProfile.Profile()
        _round(args.devices, args.rounds_of_evidence, args.batch, profile)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(45)
        return 0
    runs, ratios, crypto = [], [], []
    for _ in range(args.runs):  # the machine may be shared: each run is also expressed in bare verifies
        runs.append(_round(args.devices, args.rounds_of_evidence, args.batch, None))
        crypto.append(_crypto_us())
        ratios.append(runs[-1] / crypto[-1][0])
    median = statistics.median(runs)
    verify = statistics.median(c[0] for c in crypto)
    sign = statistics.median(c[1] for c in crypto)
    print(f"Pipeline.process: median {median:.0f} µs/message, min {min(runs):.0f}, over {args.runs} runs "
          f"({', '.join(f'{r:.0f}' for r in runs)})")
    print(f"bare ES256 verify {verify:.0f} µs, sign {sign:.0f} µs: {(verify + sign) / median:.0%} of the message")
    print(f"message / bare verify: median {statistics.median(ratios):.2f} "
          f"(in-process efficiency {1 / statistics.median(ratios):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
