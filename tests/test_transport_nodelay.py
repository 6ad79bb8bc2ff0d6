"""The hub's broker connections send small packets at once (TCP_NODELAY, RFC 896 / RFC 1122 §4.2.3.4).

With Nagle's algorithm on, a result and its quarantine command published after a quiet spell waited for
the broker's delayed ACK: the last evidence of the bench's 200/s phase took 44-48 ms to its quarantine
instead of ~12 ms (docs/SCALING.md). The figure lives in the bench; here, the option itself.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from device_sim.fleet import Fleet
from hub.broker import control
from hub.broker.process import MosquittoProcess
from hub.broker.transport import BrokerAddress, send_without_delay
from hub.server.localhub import LocalHub
from tests.e2e import make_env


def _nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def _tcp_pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    return server, client, accepted


def test_a_tcp_socket_gets_nodelay_and_a_tls_socket_passes_it_to_its_tcp_socket() -> None:
    server, client, accepted = _tcp_pair()
    try:
        assert _nodelay(client) == 0  # the kernel's default: Nagle on
        send_without_delay(None, None, client)  # type: ignore[arg-type]
        assert _nodelay(client) != 0
        context = ssl.create_default_context()
        wrapped = context.wrap_socket(accepted, server_hostname="localhost", do_handshake_on_connect=False)
        assert _nodelay(wrapped) == 0
        send_without_delay(None, None, wrapped)  # type: ignore[arg-type]
        assert _nodelay(wrapped) != 0
        wrapped.close()
    finally:
        for sock in (client, accepted, server):
            sock.close()


def test_a_socket_that_is_not_tcp_or_has_no_options_is_left_as_it_is() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    try:
        send_without_delay(None, None, left)  # type: ignore[arg-type]  # no TCP options: no error
        with pytest.raises(OSError):
            _nodelay(left)
    finally:
        left.close()
        right.close()
    send_without_delay(None, None, object())  # type: ignore[arg-type]  # a wrapper without setsockopt


@pytest.mark.broker
def test_a_worker_connects_to_the_broker_with_nodelay(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 2, "honest:1", epoch_period_s=3600.0)
    with LocalHub(env.settings, count=1) as hub, \
            Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        assert env.attest_round(fleet) == len(env.devices)
        sock = hub.workers[0].transport.client.socket()
        assert isinstance(sock, socket.socket)
        assert _nodelay(sock) != 0


@pytest.mark.broker
def test_the_operator_cli_control_connection_opens_with_nodelay(
        broker: MosquittoProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def recording(client: object, userdata: object, sock: socket.socket) -> None:
        send_without_delay(client, userdata, sock)  # type: ignore[arg-type]
        seen.append(_nodelay(sock))

    monkeypatch.setattr(control, "send_without_delay", recording)
    executor = control.ConnectionExecutor(BrokerAddress(broker.host, broker.port, "nodelay-cli"), timeout=2.0)
    assert executor([]) == []  # no command: connected, subscribed, nothing to wait for
    assert seen and all(value != 0 for value in seen)
