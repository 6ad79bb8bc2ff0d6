"""Start and stop a real Mosquitto broker from a template in ``broker_config/``.

For the tests, the demo and the benchmarks. A template is a Mosquitto config
with ``{name}`` placeholders: ``{port}``, ``{host}`` and ``{data_dir}`` always,
others passed as ``values``. As root, ``user <current user>`` is appended so
Mosquitto does not switch to the ``mosquitto`` user (which could not write to a
private temporary directory).

Exceptions::

    BrokerError
    ├── MosquittoNotFoundError   no mosquitto binary
    ├── BrokerConfigError        template missing or a placeholder without a value
    └── BrokerStartError         the broker exited or did not accept connections in time
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from hub.crypto.pki import hub_common_name
from hub.resources import data_path_or_default

__all__ = [
    "BROKER_CONFIG_DIR",
    "BrokerConfigError",
    "BrokerError",
    "BrokerStartError",
    "MosquittoNotFoundError",
    "MosquittoProcess",
    "find_dynsec_plugin",
    "find_mosquitto",
    "free_port",
    "render_acl",
    "render_template",
]

BROKER_CONFIG_DIR = data_path_or_default("broker_config")  # the checkout's folder, or the wheel's package data
_FALLBACK_BINARIES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto")
_DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"
_DYNSEC_DIRS = ("/usr/lib/*-linux-gnu", "/usr/lib", "/usr/local/lib", "/usr/lib/mosquitto", "/usr/local/lib/mosquitto")
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_INSTALL_HINT = "install it with `sudo apt-get install mosquitto` (or run `make setup`)"


class BrokerError(RuntimeError):
    """Base class of the errors raised while running a broker."""


class MosquittoNotFoundError(BrokerError):
    """The mosquitto binary is not on PATH nor in /usr/sbin."""


class BrokerConfigError(BrokerError):
    """A template is missing or names a placeholder that has no value."""


class BrokerStartError(BrokerError):
    """Mosquitto exited, or did not accept TCP connections before the deadline."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary; raises MosquittoNotFoundError with an install hint."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _FALLBACK_BINARIES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise MosquittoNotFoundError(f"mosquitto not found on PATH nor in {', '.join(_FALLBACK_BINARIES)}: {_INSTALL_HINT}")


def find_dynsec_plugin() -> str:
    """Path of Mosquitto's dynamic-security plugin (Debian's package installs it in the multiarch lib dir)."""
    for pattern in _DYNSEC_DIRS:
        for directory in sorted(Path("/").glob(pattern.lstrip("/"))):
            candidate = directory / _DYNSEC_PLUGIN
            if candidate.is_file():
                return str(candidate)
    raise MosquittoNotFoundError(f"{_DYNSEC_PLUGIN} not found in {', '.join(_DYNSEC_DIRS)}: {_INSTALL_HINT}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Replace every ``{name}`` in ``text``; a placeholder without a value is an error."""
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - set(values))
    if missing:
        raise BrokerConfigError(f"template placeholders without a value: {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


HUB_ACL_TOPICS = (
    "topic read fleet/+/evidence",
    "topic read fleet/+/data",
    "topic readwrite fleet/+/cmd",
    "topic readwrite fleet/+/result",
    "topic readwrite fleet/+/verified-data",
    "topic readwrite hub/#",
)


def render_acl(hub_identities: Iterable[str], template: str | Path = "acl") -> str:
    """broker_config/acl with ``{hub_users}`` filled: one ``user hub-<name>`` block per hub worker.

    acl_file has no username wildcards, so every hub worker identity is listed (each
    needs its own anyway: one persistent session per shared-subscription member).
    """
    blocks = ["\n".join((f"user {hub_common_name(name)}", *HUB_ACL_TOPICS)) for name in hub_identities]
    text = _resolve_template(template).read_text(encoding="utf-8")
    return render_template(text, {"hub_users": "\n\n".join(blocks)})


def _resolve_template(template: str | Path) -> Path:
    """A bare name (``"dev.conf"``) is looked up in broker_config/; anything else is a path."""
    path = Path(template)
    if path.name == str(template):
        path = BROKER_CONFIG_DIR / path
    if not path.is_file():
        raise BrokerConfigError(f"broker config template not found: {template} (looked in {BROKER_CONFIG_DIR})")
    return path


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port``.

    Without this check a broker that failed to bind (port taken meanwhile) would
    look ready because *another* process accepts the connection. Linux only: where
    /proc is missing, this returns True and the TCP check alone decides.
    """
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        return True
    inodes: set[str] = set()
    for table in tables:
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 is the inode
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return False
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:  # process gone, or fds closed while we looked
        return False
    return any(link.startswith("socket:[") and link[8:-1] in inodes for link in links)


class MosquittoProcess:
    """One Mosquitto broker process on a loopback port, with its config, data and log in ``work_dir``.

    ``restart()`` keeps the port and the data directory, so persisted sessions and
    retained messages survive it. Used as a context manager it starts on entry and
    stops on exit (and removes ``work_dir`` if it created it).
    """

    def __init__(
        self,
        template: str | Path = "dev.conf",
        work_dir: Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        values: Mapping[str, str] | None = None,
        startup_timeout: float = 10.0,
        binary: str | None = None,
    ) -> None:
        self._template = _resolve_template(template)
        self._binary = binary or find_mosquitto()
        self._owns_work_dir = work_dir is None
        self._work_dir = Path(tempfile.mkdtemp(prefix="mosquitto-")) if work_dir is None else work_dir
        self._host = host
        self._port = port if port is not None else free_port(host)
        self._values = dict(values or {})
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def binary(self) -> str:
        """The mosquitto program this broker runs."""
        return self._binary

    @property
    def work_dir(self) -> Path:
        return self._work_dir

    @property
    def config_path(self) -> Path:
        return self._work_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        """The broker's log file (templates log to ``{data_dir}/mosquitto.log``)."""
        return self._work_dir / "mosquitto.log"

    @property
    def stderr_path(self) -> Path:
        return self._work_dir / "mosquitto.stderr"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def render_config(self) -> Path:
        """Write the rendered configuration to ``config_path`` and return it."""
        values = {"host": self._host, "port": str(self._port), "data_dir": str(self._work_dir), **self._values}
        for key, value in values.items():
            if "\n" in value or "\r" in value:
                raise BrokerConfigError(f"value of {{{key}}} contains a line break: {value!r}")
        text = render_template(self._template.read_text(encoding="utf-8"), values)
        if os.geteuid() == 0 and not re.search(r"^\s*user\s", text, re.MULTILINE):
            user = pwd.getpwuid(os.geteuid()).pw_name
            text += f"\n# added by MosquittoProcess: keep the caller's identity\nuser {user}\n"
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(text, encoding="utf-8")
        return self.config_path

    def start(self) -> None:
        """Start the broker and wait until its port accepts a TCP connection."""
        if self.running:
            raise BrokerStartError(f"mosquitto already running (pid {self.pid}) on {self._host}:{self._port}")
        config = self.render_config()
        with self.stderr_path.open("ab") as err:
            try:
                self._proc = subprocess.Popen(
                    [self._binary, "-c", str(config)], stdin=subprocess.DEVNULL, stdout=err, stderr=err
                )
            except OSError as exc:
                raise BrokerStartError(f"cannot run {self._binary}: {exc}") from exc
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise BrokerStartError(f"mosquitto exited with code {code} at startup\n{self.log_tail()}")
            if _listens(self._proc.pid, self._port) and _accepts(self._host, self._port):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerStartError(
                    f"mosquitto did not accept connections on {self._host}:{self._port} "
                    f"within {self._startup_timeout:.0f} s\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (Mosquitto saves its database on the way out); SIGKILL after ``timeout``."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash; only what Mosquitto had already saved survives."""
        self._end(signal.SIGKILL, None)

    def _end(self, sig: signal.Signals, timeout: float | None) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or kill) and start again on the same port with the same data directory."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its ACL file and certificate revocation list."""
        if self._proc is None or self._proc.poll() is not None:
            raise BrokerError("mosquitto is not running")
        self._proc.send_signal(signal.SIGHUP)

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the broker's log and stderr, for error messages."""
        parts: list[str] = []
        for path in (self.log_path, self.stderr_path):
            if path.exists():
                tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts) if parts else "(no broker log written)"

    def close(self) -> None:
        """Stop the broker and remove ``work_dir`` if this object created it."""
        self.stop()
        if self._owns_work_dir:
            shutil.rmtree(self._work_dir, ignore_errors=True)

    def __enter__(self) -> MosquittoProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
