"""Network namespaces made by a test (as root), standing in for separate hosts.

Each namespace has only its loopback interface. The test process bridges chosen TCP ports between
namespaces with ``Forwarder``: its listening socket is created inside one namespace and its outgoing
connections inside another (``setns(2)`` applies to the calling thread only, and a socket stays in the
namespace it was created in). So a hub group inside namespace ``a`` reaches the broker and PostgreSQL
of the root namespace at ``127.0.0.1`` of its own loopback, and nothing else; no address is added to
the root namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no ``ip``, or the kernel refuses)."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise NamespaceUnavailable(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")


@contextlib.contextmanager
def namespaces(count: int) -> Iterator[list[str]]:
    """``count`` fresh network namespaces with loopback up; deleted afterwards, whatever happens."""
    if os.geteuid() != 0:
        raise NamespaceUnavailable("creating network namespaces needs root")
    names = [f"attest-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    made: list[str] = []
    try:
        for name in names:
            try:
                _ip("netns", "add", name)
            except FileNotFoundError as exc:
                raise NamespaceUnavailable("no `ip` command (iproute2)") from exc
            made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _usable(names[0])
        yield names
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10, check=False)


def _usable(name: str) -> None:
    """Both ways in must work: ``ip netns exec`` (it also needs a mount namespace) and ``setns`` here."""
    probe = subprocess.run(["ip", "netns", "exec", name, "true"], capture_output=True, text=True, timeout=10,
                           check=False)
    if probe.returncode != 0:
        raise NamespaceUnavailable(f"ip netns exec: {probe.stderr.strip() or probe.returncode}")
    try:
        socket_in(name).close()
    except OSError as exc:
        raise NamespaceUnavailable(f"setns into a network namespace: {exc}") from exc


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def ns_path(name: str | None) -> str:
    """The namespace file: ``/run/netns/<name>``, or the test process's own for ``None``."""
    return f"/run/netns/{name}" if name else f"/proc/{os.getpid()}/ns/net"


def socket_in(name: str | None) -> socket.socket:
    """A TCP socket created inside namespace ``name`` (the calling thread returns to its own namespace)."""
    home = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"
    home_fd = os.open(home, os.O_RDONLY)
    try:
        _setns(ns_path(name))
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            if _libc.setns(home_fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's namespace failed")
    finally:
        os.close(home_fd)


class Forwarder:
    """TCP from ``listen`` (host, port) inside ``listen_ns`` to ``target`` (host, port) inside ``target_ns``
    (``None``: the test process's namespace). Port 0 picks a free one (``port``)."""

    def __init__(self, listen_ns: str | None, listen: tuple[str, int], target_ns: str | None,
                 target: tuple[str, int]) -> None:
        self._target_ns, self._target = target_ns, target
        self._server = socket_in(listen_ns)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(listen)
        self._server.listen(64)
        self.port: int = self._server.getsockname()[1]
        self._closed = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name=f"fwd-{self.port}").start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket_in(self._target_ns)
            except OSError:
                client.close()
                continue
            try:
                upstream.connect(self._target)
            except OSError:  # the target is down (a host killed): refuse this one, as the network would
                upstream.close()
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:  # one side closed (a process died): close both, as the network would
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            for sock in self._conns:
                with contextlib.suppress(OSError):
                    sock.close()


def exec_in(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside namespace ``name`` in a new session (so the whole group can be killed)."""
    with log.open("ab") as out:
        return subprocess.Popen(["ip", "netns", "exec", name, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _parse(spec: str) -> tuple[str | None, tuple[str, int]]:
    ns, host, port = spec.rsplit(":", 2)
    return (ns or None), (host, int(port))


class ForwarderProcess:
    """``Forwarder``s in a child process of their own, so the bytes they move do not compete with the
    test's threads (a device fleet) for one interpreter. Each spec is ``(listen_ns, listen, target_ns,
    target)`` as for ``Forwarder``, with fixed ports."""

    def __init__(self, specs: list[tuple[str | None, tuple[str, int], str | None, tuple[str, int]]]) -> None:
        import sys

        argv = [f"{ln or ''}:{la[0]}:{la[1]}={tn or ''}:{ta[0]}:{ta[1]}" for ln, la, tn, ta in specs]
        self._proc = subprocess.Popen([sys.executable, "-m", "tests.netns", *argv], stdout=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, cwd=str(Path(__file__).resolve().parents[1]))
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line.strip() != b"ready":
            self.close()
            raise NamespaceUnavailable(f"forwarders did not start: {line!r}")

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def _main(argv: list[str]) -> None:
    """``python -m tests.netns [ns]:host:port=[ns]:host:port ...``: forward until terminated."""
    import signal
    import sys

    forwarders = []
    for arg in argv:
        listen, target = arg.split("=", 1)
        (lns, laddr), (tns, taddr) = _parse(listen), _parse(target)
        forwarders.append(Forwarder(lns, laddr, tns, taddr))
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    for fwd in forwarders:
        fwd.close()
    sys.exit(0)


if __name__ == "__main__":
    import signal
    import sys

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    _main(sys.argv[1:])
