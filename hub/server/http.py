"""The worker's HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz`` (alive), ``/readyz`` (ready).

Liveness fails when the worker loop has not turned for ``stall_s`` seconds;
readiness fails while the broker is disconnected or the last commit failed
(the hub then acknowledges nothing, so the broker keeps the evidence).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HealthView:
    """What the endpoint reports; the worker updates it, the HTTP thread reads it."""

    def __init__(self, stall_s: float = 30.0) -> None:
        self.stall_s = stall_s
        self.broker_connected = False
        self.database_ok = True
        self.last_tick = time.monotonic()
        self.last_error = ""

    def alive(self) -> bool:
        return time.monotonic() - self.last_tick < self.stall_s

    def ready(self) -> bool:
        return self.alive() and self.broker_connected and self.database_ok

    def as_json(self) -> dict[str, object]:
        return {"alive": self.alive(), "ready": self.ready(), "broker_connected": self.broker_connected,
                "database_ok": self.database_ok, "last_error": self.last_error}


def serve_http(host: str, port: int, registry: CollectorRegistry, health: HealthView) -> Callable[[], None]:
    """Start the endpoint on a daemon thread; returns a function that stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path in ("/healthz", "/readyz"):
                ok = health.alive() if self.path == "/healthz" else health.ready()
                self._send(200 if ok else 503, json.dumps(health.as_json()).encode(), "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    thread = threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop
