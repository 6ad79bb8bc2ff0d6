"""A TCP proxy between some MQTT clients and the broker that a test can cut and restore.

While cut, open connections are closed and new ones are accepted and closed at once:
to the client this is a network partition (its sends fail, it reconnects with backoff);
the broker sees the client vanish. Threads, one pair per connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

from hub.broker.process import free_port


class PartitionProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = free_port(host)
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server((host, self.port))
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, name="partition-proxy", daemon=True)
        self.connections = 0  # accepted and forwarded, for the report

    def start(self) -> PartitionProxy:
        self._thread.start()
        return self

    def cut(self) -> None:
        """Partition: drop every open connection and refuse new ones until ``restore``."""
        self._cut.set()
        with self._lock:
            doomed, self._sockets = self._sockets, set()
        for sock in doomed:
            _close(sock)

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._thread.join(5)
        self._listener.close()

    def __enter__(self) -> PartitionProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2.0)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self._cut.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        _close(src)
        _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
