"""HTTP API figures at fleet scale: device lookup and list pages while the evidence loop runs.

``python -m bench.api [--devices N] [--databases sqlite,postgresql] [--seconds S]`` enrols N devices in
bulk (bench/stage.py; 0.1% of them quarantined), starts the hub (one worker process) on the stage's broker
and ``attest-hub api`` (its own process, a bearer token checked on every request), then, while
honest evidence flows at ``--rate`` per second, times over HTTP/1.1 keep-alive:

* ``lookup``: ``GET /v1/devices/{id}`` for random ids (device, verdicts, commands, findings, result);
* ``page``: ``GET /v1/devices?limit=50`` from a random cursor anywhere in the id space;
* ``page_status``: ``GET /v1/devices?status=quarantined&limit=50`` (a rare status, its index);
* ``page_class``: ``GET /v1/devices?class=...&limit=50`` from a random cursor.

Figures are reported (p50, p99, max in ms), never asserted; written to bench/results/api-latest-DATABASES.json
and .md (``--slow-clients N``: the slow-client figure alone, to api-latest.slow.json).
Targets (docs/SCALING.md): lookup p99 < 20 ms, list page p99 < 100 ms at 1,000,000 devices.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import update

from bench import loadgen
from bench.run import RESULTS, machine
from bench.scenarios import Cursor, start_hub, steady
from bench.stage import enrol_bulk, open_stage
from hub.broker.process import free_port
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import open_store
from hub.server.api.app import build_app
from hub.server.api.context import ApiContext
from hub.server.api.serve import serve_in_thread, uvicorn_config
from hub.server.api.tokens import create_token
from hub.server.api.v1 import encode_cursor
from hub.store import Store
from hub.store.db import DEVICES


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"n": len(ordered), "p50": round(statistics.median(ordered) * 1000, 2),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
            "max": round(ordered[-1] * 1000, 2)}


def _quarantine_some(url: str, enrolled: int, share: float) -> None:
    ids = [loadgen.device_id(i) for i in random.Random(7).sample(range(enrolled), max(1, int(enrolled * share)))]
    store = Store(url)
    try:
        with store.transaction() as conn:
            for first in range(0, len(ids), 5000):
                conn.execute(update(DEVICES).where(DEVICES.c.device_id.in_(ids[first:first + 5000]))
                             .values(status="quarantined"))
    finally:
        store.close()


def _wait_ready(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API on port {port} did not become ready")


def _timed(conn: http.client.HTTPConnection, path: str, token: str) -> float:
    started = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
    return elapsed


def measure(database: str, enrolled: int, seconds: float, rate: float, requests: int, work: Path,
            pool: loadgen.KeyPool) -> dict[str, Any]:
    stage = open_stage(work / f"{database}-{enrolled}", database, 0, pool)
    stage.enrolled = enrolled
    enrol_s = enrol_bulk(stage.settings.effective_database_url, enrolled, pool)
    _quarantine_some(stage.settings.effective_database_url, enrolled, 0.001)
    print(f"  {database}: {enrolled} devices enrolled in {enrol_s:.0f}s", flush=True)
    store = open_store(stage.settings)
    token, _ = create_token(store, "bench", "read", ttl_s=None)
    port = free_port()
    # The API in a process of its own (as `attest-hub api` runs it): the load generator's threads in this
    # process must not share its interpreter lock.
    api = subprocess.Popen([str(Path(sys.executable).parent / "attest-hub"), "--state-dir",
                            str(stage.settings.state_dir), "--database-url", stage.settings.effective_database_url,
                            "api", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={k: v for k, v in os.environ.items() if not k.startswith("ATTEST_HUB_")})
    _wait_ready(port)
    hub, factory = start_hub(stage, 1, work)
    cursor = Cursor(enrolled, probes=100)
    loop: dict[str, Any] = {}
    evidence = threading.Thread(target=lambda: loop.update(
        vars(steady(stage, cursor, hub, factory, rate, seconds, 2.0))), daemon=True)
    rng = random.Random(1)
    samples: dict[str, list[float]] = {"lookup": [], "page": [], "page_status": [], "page_class": []}
    try:
        evidence.start()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        _timed(conn, "/v1/devices?limit=1", token)  # warm the connection and the token row
        for k in range(requests):
            some = loadgen.device_id(rng.randrange(enrolled))
            kind = ("lookup", "page", "page_status", "page_class")[k % 4]
            if kind == "lookup":
                path = f"/v1/devices/{some}"
            elif kind == "page":
                path = f"/v1/devices?limit=50&cursor={encode_cursor(some)}"
            elif kind == "page_status":
                path = "/v1/devices?status=quarantined&limit=50"
            else:
                path = f"/v1/devices?class={loadgen.device_class(rng.randrange(enrolled))}&limit=50" \
                       f"&cursor={encode_cursor(some)}"
            samples[kind].append(_timed(conn, path, token))
        conn.close()
        evidence.join(seconds + 120)
    finally:
        hub.stop()
        api.terminate()
        api.wait(10)
        store.close()
        stage.close()
    figures = {kind: _percentiles(values) for kind, values in samples.items()}
    line = ", ".join(f"{k} p50 {v['p50']} p99 {v['p99']} ms" for k, v in figures.items())
    print(f"  {database} {enrolled}: {line}; evidence loop p99 {loop.get('latency_ms', {}).get('p99')} ms",
          flush=True)
    return {"database": database, "enrolled": enrolled, "enrol_seconds": round(enrol_s, 1), "http": figures,
            "evidence_rate": rate, "evidence_latency_ms": loop.get("latency_ms")}


def _close_times(socks: list[tuple[Any, float]], limit_s: float) -> list[float]:
    """Seconds from each socket's connect until the server closed it (sockets still open are left out)."""
    import selectors

    out: list[float] = []
    pending = {sock.fileno(): (sock, at) for sock, at in socks}
    deadline = time.monotonic() + limit_s
    with selectors.DefaultSelector() as selector:
        for sock, _ in socks:
            selector.register(sock, selectors.EVENT_READ)
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.05):
                sock, at = pending[key.fd]
                try:
                    data = sock.recv(1024)
                except OSError:
                    data = b""
                if not data:
                    out.append(time.monotonic() - at)
                    selector.unregister(sock)
                    del pending[key.fd]
    return out


def slow_clients(count: int, work: Path, header_timeout_s: float = 10.0, cap: int = 200) -> dict[str, Any]:
    """``count`` slowloris connections (a partial request head each, never finished) against the default
    bounds; while they hold on, an ordinary client retries /healthz. Reports the server's thread count, how
    many were closed on arrival, when the rest were closed, and how long the ordinary client waited."""
    import socket

    from hub.config import load_settings
    from hub.server.localhub import prepare_state

    settings = prepare_state(load_settings(None, environ={}, state_dir=work / "slow", api_max_connections=cap,
                                           api_header_timeout_s=header_timeout_s))
    store = open_store(settings)
    ctx = ApiContext(settings, store, load_hub_keys(settings), publish=False)
    port = free_port()
    threads_before = threading.active_count()
    stop_api = serve_in_thread(uvicorn_config(build_app(ctx), settings, "127.0.0.1", port))
    socks: list[tuple[socket.socket, float]] = []
    started = time.monotonic()
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append((sock, time.monotonic()))
            with contextlib.suppress(OSError):  # closed on arrival by the cap
                sock.sendall(b"GET /v1/devices HTTP/1.1\r\nHost: x\r\n")
        threads_during = threading.active_count()
        closed: list[float] = []
        watcher = threading.Thread(target=lambda: closed.extend(_close_times(socks, header_timeout_s + 10)))
        watcher.start()
        waited = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < header_timeout_s + 10:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    waited = time.monotonic() - t0
                    conn.close()
                    break
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
        watcher.join()
    finally:
        for sock, _ in socks:
            sock.close()
        stop_api()
        store.close()
    on_arrival = sum(1 for c in closed if c < 1.0)
    rest = sorted(c for c in closed if c >= 1.0)
    figures = {"connections": count, "cap": cap, "header_timeout_s": header_timeout_s,
               "server_threads_before": threads_before, "server_threads_during": threads_during,
               "closed_on_arrival": on_arrival, "closed_at_deadline": len(rest),
               "deadline_closes_s": [round(rest[0], 2), round(rest[-1], 2)] if rest else None,
               "still_open": count - len(closed), "all_closed_after_s": round(time.monotonic() - started, 2),
               "ordinary_client_waited_s": None if waited is None else round(waited, 2)}
    print(f"  slow clients: {figures}", flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=float, default=20.0, help="evidence loop duration")
    parser.add_argument("--rate", type=float, default=200.0, help="honest evidence per second")
    parser.add_argument("--requests", type=int, default=2000, help="HTTP requests, four kinds in turn")
    parser.add_argument("--out", default=None, help="results file stem (default bench/results/api-latest-DATABASES)")
    parser.add_argument("--slow-clients", type=int, default=0,
                        help="only the slow-client figure: this many slowloris connections, default bounds")
    args = parser.parse_args(argv)
    if args.slow_clients:
        with tempfile.TemporaryDirectory(prefix="attest-bench-slow-") as tmp:
            figures = slow_clients(args.slow_clients, Path(tmp))
        slow_out = Path(args.out or RESULTS / "api-latest").with_suffix(".slow.json")
        slow_out.write_text(json.dumps(figures, indent=2) + "\n")
        return 0
    pool = loadgen.KeyPool.make()
    with tempfile.TemporaryDirectory(prefix="attest-bench-api-") as tmp:
        runs = [measure(db, args.devices, args.seconds, args.rate, args.requests, Path(tmp), pool)
                for db in args.databases.split(",")]
    result = {"machine": machine(), "runs": runs}
    out = Path(args.out or RESULTS / f"api-latest-{args.databases.replace(',', '-')}")
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    rows = ["| database | devices | request | n | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        for kind, f in run["http"].items():
            rows.append(f"| {run['database']} | {run['enrolled']:,} | {kind} | {f['n']} | {f['p50']} | {f['p99']} "
                        f"| {f['max']} |")
    out.with_suffix(".md").write_text("# HTTP API at fleet scale (bench/api.py)\n\n" + "\n".join(rows) + "\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
