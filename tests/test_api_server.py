"""The API under its real server (uvicorn on loopback): slow clients are bounded, operator TLS client certificates.

Slow clients: each connection must deliver a request head within ``api_header_timeout_s``, and connections
beyond ``api_max_connections`` are closed on arrival, so slow clients hold neither threads nor sockets for
long. The figures printed here (time until the server closed the slow connections) go to docs/SECURITY.md.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import selectors
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hub.broker.process import free_port
from hub.crypto import pki
from hub.server.api.app import build_app
from hub.server.api.context import ApiContext
from hub.server.api.serve import serve_in_thread, uvicorn_config
from tests.api_env import ApiEnv, make_api_env


def _serve(env: ApiEnv, **settings: object) -> tuple[int, object]:
    env.settings = replace(env.settings, **settings)  # type: ignore[arg-type]
    env.ctx = ApiContext(env.settings, env.store, env.ctx.keys, publish=False)
    port = free_port()
    stop = serve_in_thread(uvicorn_config(build_app(env.ctx), env.settings, "127.0.0.1", port))
    return port, stop


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ApiEnv]:
    env = make_api_env(tmp_path, n=2)
    yield env
    env.store.close()


def _close_times(socks: list[tuple[socket.socket, float]], limit_s: float) -> list[float | None]:
    """Per socket, seconds from its connect until the peer closed it (None: still open after ``limit_s``)."""
    result: list[float | None] = [None] * len(socks)
    open_ = {s.fileno(): i for i, (s, _) in enumerate(socks)}
    deadline = time.monotonic() + limit_s
    with selectors.DefaultSelector() as selector:
        for sock, _ in socks:
            selector.register(sock, selectors.EVENT_READ)
        while open_ and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(1024)
                except OSError:
                    data = b""
                if not data:
                    index = open_.pop(sock.fileno())
                    result[index] = time.monotonic() - socks[index][1]
                    selector.unregister(sock)
    return result


def _closed_within(sock: socket.socket, limit_s: float) -> float | None:
    """Seconds until the peer closed ``sock`` (EOF or reset), or None if it stayed open for ``limit_s``."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    try:
        while sock.recv(1024):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.monotonic() - started


def test_slow_clients_are_closed_and_the_connection_cap_holds(env: ApiEnv) -> None:
    cap, head_timeout = 20, 1.0
    port, stop = _serve(env, api_max_connections=cap, api_header_timeout_s=head_timeout)
    slow: list[tuple[socket.socket, float]] = []
    try:
        started = time.monotonic()
        for _ in range(cap + 40):  # a slowloris: connect, send part of a request head, never finish it
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            slow.append((s, time.monotonic()))
            with contextlib.suppress(OSError):  # already closed by the cap
                s.sendall(b"GET /v1/devices HTTP/1.1\r\nHost: x\r\n")
        # At the cap, an ordinary client is still served at once: the longest-waiting slow connection is shed.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        served_at = time.monotonic()
        conn.close()
        closes = _close_times(slow, head_timeout + 5)
        assert all(c is not None for c in closes), "a slow connection outlived the request-head deadline"
        times = sorted(c for c in closes if c is not None)
        shed = sum(1 for c in times if c < head_timeout / 2)
        assert shed == 41  # 40 beyond the cap as newer ones arrived, 1 for the ordinary client
        at_deadline = times[shed:]
        assert all(head_timeout * 0.9 <= c < head_timeout + 2 for c in at_deadline)
        assert served_at - started < head_timeout / 2  # served while the slow connections still held on
        print(f"\nslow clients: {len(slow)} connections, cap {cap}: {shed} shed (slowest "
              f"{times[shed - 1] * 1000:.0f} ms after its connect), the other {len(at_deadline)} closed "
              f"{at_deadline[0]:.2f}-{at_deadline[-1]:.2f} s after connecting (deadline {head_timeout} s); "
              f"an ordinary client served {(served_at - started) * 1000:.0f} ms after the first slow connect")
        # A client that trickles its request head a byte at a time is cut off at the deadline as well.
        trickle = socket.create_connection(("127.0.0.1", port), timeout=5)
        began = time.monotonic()
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                trickle.sendall(bytes([byte]))
                time.sleep(0.05)
        except OSError:
            pass
        assert _closed_within(trickle, 5) is not None
        assert time.monotonic() - began < head_timeout + 3
        trickle.close()
    finally:
        for s, _ in slow:
            s.close()
        stop()  # type: ignore[operator]


def _tls_material(tmp: Path) -> dict[str, Path]:
    operator_ca = pki.create_ca(tmp / "operator-ca", "Operator CA")
    server = pki.issue_server_cert(operator_ca, tmp / "server")
    alice = pki.issue_device_cert(operator_ca, tmp / "alice", "alice")
    forger_ca = pki.create_ca(tmp / "forger-ca", "Operator CA")  # the same name, another key
    forged = pki.issue_device_cert(forger_ca, tmp / "forged", "alice")
    return {"ca": operator_ca.cert_path, "server_cert": server.cert_path, "server_key": server.key_path,
            "alice_cert": alice.cert_path, "alice_key": alice.key_path,
            "forged_cert": forged.cert_path, "forged_key": forged.key_path}


def _client(files: dict[str, Path], who: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files["ca"]))
    if who is not None:
        context.load_cert_chain(str(files[f"{who}_cert"]), str(files[f"{who}_key"]))
    return context


def test_operator_client_certificates_authenticate_and_forged_ones_fail(env: ApiEnv, tmp_path: Path) -> None:
    files = _tls_material(tmp_path / "tls")
    port, stop = _serve(env, api_tls_cert=str(files["server_cert"]), api_tls_key=str(files["server_key"]),
                        api_client_ca=str(files["ca"]), api_client_cert_scope="operate")
    try:
        def get(who: str | None, path: str = "/v1/devices", headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, object]]:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=_client(files, who), timeout=5)
            try:
                conn.request("GET", path, headers=headers or {})
                response = conn.getresponse()
                return response.status, json.loads(response.read() or b"{}")
            finally:
                conn.close()

        status, body = get("alice")
        assert status == 200 and len(body["items"]) == 2  # type: ignore[arg-type]
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=_client(files, "alice"), timeout=5)
        device = env.device_ids[0]
        conn.request("POST", f"/v1/devices/{device}/quarantine", body=json.dumps({"reason": "by certificate"}),
                     headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        assert answer.status == 200 and json.loads(answer.read())["actor"] == "cert:alice"
        conn.close()
        # No certificate: the handshake succeeds, but the request needs another credential.
        assert get(None)[0] == 401
        assert get(None, headers={"Authorization": f"Bearer {env.read}"})[0] == 200
        # A certificate from another CA with the same names fails the handshake itself.
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            get("forged")
    finally:
        stop()  # type: ignore[operator]
