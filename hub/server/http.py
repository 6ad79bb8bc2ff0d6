"""The worker's HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz`` (alive), ``/readyz`` (ready), served
with the ``/v1`` API and the web console by one ASGI application (hub/server/api/) under uvicorn.

Liveness fails when the worker loop has not turned for ``stall_s`` seconds;
readiness fails while the broker is disconnected or the last commit failed
(the hub then acknowledges nothing, so the broker keeps the evidence).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from hub.config import Settings
from hub.crypto.hubkeys import HubKeys


class HealthView:
    """What the endpoint reports; the worker updates it, the HTTP thread reads it."""

    def __init__(self, stall_s: float = 30.0) -> None:
        self.stall_s = stall_s
        self.broker_connected = False
        self.database_ok = True
        self.last_tick = time.monotonic()
        self.last_error = ""
        self.no_operator_keys = False  # served without operator keys (allow_no_operator_keys): nothing trusted

    def alive(self) -> bool:
        return time.monotonic() - self.last_tick < self.stall_s

    def ready(self) -> bool:
        return self.alive() and self.broker_connected and self.database_ok

    def as_json(self) -> dict[str, object]:
        return {"alive": self.alive(), "ready": self.ready(), "broker_connected": self.broker_connected,
                "database_ok": self.database_ok, "last_error": self.last_error,
                "no_operator_keys": self.no_operator_keys}


def serve_http(host: str, port: int, registry: CollectorRegistry, health: HealthView, settings: Settings,
               keys: HubKeys | None = None) -> Callable[[], None]:
    """Serve the hub's ASGI application (hub/server/api/: these endpoints, the /v1 API and the console) with
    uvicorn on a daemon thread; returns a function that stops it. OSError if the port cannot be bound."""
    from hub.broker.enforcement import enforcer_from_settings
    from hub.crypto.hubkeys import load_hub_keys
    from hub.crypto.hubstate import open_store
    from hub.server.api.app import build_app
    from hub.server.api.context import ApiContext
    from hub.server.api.serve import serve_in_thread, uvicorn_config

    store = open_store(settings)  # the API audits operators' actions: the audit key, the checks
    ctx = ApiContext(settings, store, keys or load_hub_keys(settings), health, registry,
                     enforcer_from_settings(settings))
    try:
        stop_server = serve_in_thread(uvicorn_config(build_app(ctx), settings, host, port))
    except OSError:
        store.close()
        raise

    def stop() -> None:
        stop_server()
        store.close()

    return stop
