"""Serving the application with uvicorn: timeouts, a connection cap, TLS and operator client certificates.

uvicorn bounds idle keep-alive connections and, with ``limit_concurrency``,
answers 503 beyond a number of requests in flight. Two bounds it lacks are
added by ``BoundedProtocol`` (its h11 protocol, subclassed):

* a connection cap: beyond ``api_max_connections`` the connection that has waited
  longest without sending a request head (slow or idle) is shed to make room (or,
  if every connection is inside a request, the newcomer is refused), so slow
  clients can neither pile up sockets nor lock ordinary clients out;
* a request-header deadline: a connection must deliver a complete request head
  within ``api_header_timeout_s`` of arriving (or of its previous response),
  else it is closed: a client sending one byte a second holds nothing for long.

With ``api_client_ca`` the TLS handshake asks for a client certificate and
verifies it against that CA (a forged or foreign certificate fails the
handshake); a verified certificate is passed to the application as the ASGI
TLS extension's ``client_cert_chain``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from hub.config import Settings

log = logging.getLogger(__name__)


class _WithClientCert:
    """The application, seeing the connection's verified client certificate in ``scope["extensions"]``."""

    def __init__(self, app: Any, pem: str) -> None:
        self.app, self.pem = app, pem

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope.setdefault("extensions", {})["tls"] = {"client_cert_chain": [self.pem]}
        await self.app(scope, receive, send)


def protocol_class(max_connections: int, header_timeout_s: float) -> type[H11Protocol]:
    # Per server: connections waiting for a request head, oldest first (insertion order), and the count of
    # connections shed since the last log line with when that line was written.
    waiting: dict[Any, None] = {}  # BoundedProtocol instances
    shed = [0, 0.0]

    def note_shed() -> None:
        shed[0] += 1
        now = time.monotonic()
        if now - shed[1] >= 10.0:  # one line per 10 s, however many
            log.warning("HTTP connection cap (%d) reached: %d connection(s) shed", max_connections, shed[0])
            shed[0], shed[1] = 0, now

    class BoundedProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) - len(self._closing()) > max_connections:
                if not waiting:  # every connection is inside a request: refuse the newcomer
                    transport.close()
                    note_shed()
                    return
                # Shed the connection that has waited longest without sending a request head (a slow or
                # idle client), so a slowloris at the cap cannot lock ordinary clients out.
                oldest = next(iter(waiting))
                oldest._disarm()
                oldest.transport.close()
                note_shed()
            ssl_object = transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if der:
                self.app = _WithClientCert(self.app, ssl.DER_cert_to_PEM_cert(der))
            self._arm()

        def _closing(self) -> list[Any]:
            return [c for c in self.connections if c.transport.is_closing()]

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout_s, self._head_timeout)
            waiting[self] = None

        def _disarm(self) -> None:
            waiting.pop(self, None)
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _head_timeout(self) -> None:
            self._deadline = None
            waiting.pop(self, None)
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()  # no complete request head in time

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a request head arrived; the application's own time from here

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request head (keep-alive) has the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return BoundedProtocol


def uvicorn_config(app: Any, settings: Settings, host: str, port: int) -> uvicorn.Config:
    tls: dict[str, Any] = {}
    if settings.api_tls_cert:
        tls = {"ssl_certfile": settings.api_tls_cert, "ssl_keyfile": settings.api_tls_key}
        if settings.api_client_ca:
            tls.update(ssl_ca_certs=settings.api_client_ca, ssl_cert_reqs=ssl.CERT_OPTIONAL)
    return uvicorn.Config(
        app, host=host, port=port, http=protocol_class(settings.api_max_connections, settings.api_header_timeout_s),
        ws="none", lifespan="off", log_config=None, access_log=False, server_header=False,
        limit_concurrency=settings.api_max_connections + 1, timeout_keep_alive=settings.api_keepalive_s,
        timeout_graceful_shutdown=5, h11_max_incomplete_event_size=16 * 1024, **tls,
    )


def serve_in_thread(config: uvicorn.Config) -> Callable[[], None]:
    """Start uvicorn on a daemon thread (no signal handlers: the caller owns them); returns a stop function.
    Raises OSError if the port cannot be bound."""
    server = uvicorn.Server(config)
    started = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve())
        except BaseException as exc:  # surfaced to the caller below
            errors.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=run, name=f"http-{config.port}", daemon=True)
    thread.start()
    while not server.started and not started.wait(0.02):
        pass
    if not server.started:
        raise OSError(f"cannot serve HTTP on {config.host}:{config.port}: {errors[0] if errors else 'failed'}")

    def stop() -> None:
        server.should_exit = True
        thread.join(10)

    return stop
