"""What compiling the hot-path modules with mypyc saves: a copy built in a temporary directory, compared side by side.

``python -m bench.compiled`` copies ``hub/`` into a temporary directory, compiles ``MODULES`` there with mypyc
(the working tree is not touched: no ``.so`` is left beside the sources), then runs the same probe alternately
in a subprocess that imports the pure-Python hub and in one that imports the compiled copy, ``--pairs`` times:

* ``verify``: the firmware scheme's ``verify`` alone (strict CBOR of envelope, header and payload, COSE checks,
  ES256, claims typing), µs per evidence, best of three passes over the fleet's evidence;
* ``process``: ``Pipeline.process`` per evidence (``bench.micro``: SQLite, batches of 256, decide, sign, commit);
* ``bare_verify``: ES256 verify with ``cryptography`` alone, in the same process (the machine's pace).

Medians over the pairs are printed with the saving in µs and in percent of the stage, and written to
``--out`` (JSON). Figures are reported, never asserted. A few lines of the copy are rewritten before compiling
(``COMPAT``): mypyc checks declared types at run time and does not compile a ``RuntimeError`` subclass as a
native class, which the pure modules do not need.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODULES = (
    "hub/crypto/cbor_strict.py",
    "hub/crypto/cose.py",
    "hub/audit.py",
    "hub/schemes/claims.py",
    "hub/schemes/firmware.py",
    "hub/appraisal/verdicts.py",
)
DATA_DIRS = ("broker_config", "firmware_manifests", "docs", "deploy")  # found beside hub/ (hub.resources)
# (file, old, new): rewrites of the copy that mypyc needs and the pure modules do not
COMPAT = (
    # a variable declared bytes is later bound to the tag's array: mypyc checks the declared type at run time
    ("hub/crypto/cose.py", "    body = item.value\n    if not isinstance(body, (tuple, list)) or len(body) != 4:",
     "    fields = item.value\n    if not isinstance(fields, (tuple, list)) or len(fields) != 4:"),
    ("hub/crypto/cose.py", "signature = body\n", "signature = fields\n"),
    # "Inheriting from most builtin types is unimplemented": keep the exception a Python class
    ("hub/audit.py", "class AuditKeyMissing(RuntimeError):",
     "from mypy_extensions import mypyc_attr\n\n\n"
     "@mypyc_attr(native_class=False)\nclass AuditKeyMissing(RuntimeError):"),
)


def build(dest: Path, modules: tuple[str, ...] = MODULES) -> float:
    """Copy ``hub/`` to ``dest``, compile ``modules`` there in place; seconds of wall time the compile took."""
    shutil.copytree(ROOT / "hub", dest / "hub", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for name in DATA_DIRS:
        (dest / name).symlink_to(ROOT / name)
    for path, old, new in COMPAT:
        if path in modules:
            target = dest / path
            text = target.read_text()
            if old not in text:
                raise SystemExit(f"bench.compiled: {path} changed, update COMPAT ({old.splitlines()[0]!r})")
            target.write_text(text.replace(old, new))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mypyc", *modules], cwd=dest, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench.compiled: mypyc failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return time.monotonic() - start


def probe(devices: int, per_device: int) -> dict[str, Any]:
    """Run in the subprocess: which modules are compiled, and µs per evidence of verify and process."""
    import importlib

    from bench.micro import _crypto_us, _round
    from device_sim.profiles import build_fleet
    from hub.crypto.freshness import epoch_nonce
    from hub.crypto.keys import load_public_pem
    from hub.schemes.base import TrustAnchor
    from hub.schemes.firmware import FirmwareScheme

    compiled = {m: importlib.import_module(m[:-3].replace("/", ".")).__file__.endswith(".so")  # type: ignore[union-attr]
                for m in MODULES}
    fleet = build_fleet(min(devices, 256), "honest:1", seed="compiled")
    nonce = epoch_nonce(b"\x00" * 32, 1)
    items = [(d.make_evidence(nonce), TrustAnchor(d.device_id, d.device_class, load_public_pem(d.public_key_pem),
                                                  d.ueid)) for d in fleet for _ in range(4)]
    scheme = FirmwareScheme()
    passes = []
    for _ in range(3):
        start = time.thread_time()
        for raw, anchor in items:
            scheme.verify(raw, anchor)
        passes.append((time.thread_time() - start) / len(items) * 1e6)
    process = _round(devices, per_device, 256, None)
    bare_verify, bare_sign = _crypto_us()
    return {"compiled": compiled, "verify": min(passes), "process": process, "bare_verify": bare_verify,
            "bare_sign": bare_sign}


def verify_loop(count: int) -> None:
    """Run in the subprocess under callgrind: sign 64 evidence, then ``count`` firmware ``verify`` calls over them."""
    from device_sim.profiles import build_fleet
    from hub.crypto.freshness import epoch_nonce
    from hub.crypto.keys import load_public_pem
    from hub.schemes.base import TrustAnchor
    from hub.schemes.firmware import FirmwareScheme

    nonce = epoch_nonce(b"\x00" * 32, 1)
    items = [(d.make_evidence(nonce), TrustAnchor(d.device_id, d.device_class, load_public_pem(d.public_key_pem),
                                                  d.ueid)) for d in build_fleet(64, "honest:1", seed="compiled")]
    scheme = FirmwareScheme()
    for i in range(count):
        raw, anchor = items[i % len(items)]
        scheme.verify(raw, anchor)


def instructions(cwd: Path, low: int = 100, high: int = 600) -> float:
    """Instructions per firmware ``verify`` (callgrind): the difference of a ``high`` and a ``low`` loop."""
    counts = []
    for count in (low, high):
        done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                               "-m", "bench.compiled", "--verify-loop", str(count)], cwd=cwd,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=True)
        line = next(x for x in done.stderr.splitlines() if "Collected :" in x)
        counts.append(int(line.rsplit(":", 1)[1].strip().replace(",", "")))
    return (counts[1] - counts[0]) / (high - low)


def _run_probe(cwd: Path, devices: int, per_device: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # bench/ and device_sim/ from the tree; hub/ from cwd first
    done = subprocess.run([sys.executable, "-m", "bench.compiled", "--probe", "--devices", str(devices),
                           "--per-device", str(per_device)], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True)
    return dict(json.loads(done.stdout.splitlines()[-1]))


def compare(pairs: int, devices: int, per_device: int, modules: tuple[str, ...] = MODULES, *,
            callgrind: bool = False) -> dict[str, Any]:
    counted: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hub-mypyc-") as tmp:
        build_s = build(Path(tmp), modules)
        if callgrind:
            counted = {"pure": instructions(ROOT), "compiled": instructions(Path(tmp))}
        runs: dict[str, list[dict[str, Any]]] = {"pure": [], "compiled": []}
        for i in range(pairs):  # alternate, and alternate which goes first, so drift hits both alike
            order = ("pure", "compiled") if i % 2 == 0 else ("compiled", "pure")
            for kind in order:
                runs[kind].append(_run_probe(ROOT if kind == "pure" else Path(tmp), devices, per_device))
    if not all(all(r["compiled"].values()) for r in runs["compiled"]) or any(
            any(r["compiled"].values()) for r in runs["pure"]):
        raise SystemExit("bench.compiled: the probes did not import the modules they were meant to")
    out: dict[str, Any] = {"modules": list(modules), "build_seconds": round(build_s, 1), "pairs": pairs,
                           "devices": devices, "per_device": per_device, "python": sys.version.split()[0]}
    for figure in ("verify", "process", "bare_verify"):
        pure = statistics.median(r[figure] for r in runs["pure"])
        comp = statistics.median(r[figure] for r in runs["compiled"])
        # each pair's own ratio too: the two runs of a pair saw the same machine state
        ratios = [c[figure] / p[figure] for p, c in zip(runs["pure"], runs["compiled"], strict=True)]
        out[figure] = {"pure_us": round(pure, 1), "compiled_us": round(comp, 1), "saved_us": round(pure - comp, 1),
                       "saved_pct": round((1 - comp / pure) * 100, 1),
                       "paired_ratio_median": round(statistics.median(ratios), 3),
                       "paired_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)]}
    if counted:
        out["verify_instructions"] = {kind: round(n) for kind, n in counted.items()}
        out["verify_instructions"]["saved_pct"] = round((1 - counted["compiled"] / counted["pure"]) * 100, 1)
    out["runs"] = runs
    return out


def markdown(data: dict[str, Any]) -> str:
    lines = [f"mypyc build of {len(data['modules'])} modules: {data['build_seconds']:.0f} s; "
             f"{data['pairs']} alternating pairs", "",
             "| figure (µs per evidence) | pure | compiled | saved | compiled / pure per pair (median, range) |",
             "|---|---|---|---|---|"]
    for figure in ("verify", "process", "bare_verify"):
        f = data[figure]
        lo, hi = f["paired_ratio_range"]
        lines.append(f"| {figure} | {f['pure_us']:.0f} | {f['compiled_us']:.0f} | {f['saved_us']:.0f} "
                     f"({f['saved_pct']:.1f}%) | {f['paired_ratio_median']:.3f} ({lo:.3f}-{hi:.3f}) |")
    if "verify_instructions" in data:
        n = data["verify_instructions"]
        lines.append(f"| verify, instructions (callgrind) | {n['pure']:,} | {n['compiled']:,} | "
                     f"{n['saved_pct']:.1f}% | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compiled", description=__doc__)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--devices", type=int, default=512)
    parser.add_argument("--per-device", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mypyc.json")
    parser.add_argument("--callgrind", action="store_true",
                        help="also count instructions per verify with valgrind (a few minutes)")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--verify-loop", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.verify_loop is not None:
        verify_loop(args.verify_loop)
        return 0
    if args.probe:
        print(json.dumps(probe(args.devices, args.per_device)))
        return 0
    data = compare(args.pairs, args.devices, args.per_device, callgrind=args.callgrind)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
