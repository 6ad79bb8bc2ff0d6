"""One swtpm process (a software TPM 2.0) per simulated device, on loopback ports.

``swtpm socket`` serves TPM commands on a TCP port P and its control channel on
P+1 (the layout the ``swtpm`` TCTI expects). The ports are probed free on
127.0.0.1 and the start is retried with new ones if swtpm cannot bind. The
control channel power-cycles the TPM (``CMD_INIT``) to simulate a reboot.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

CMD_INIT: Final = 0x02  # swtpm control channel: power the TPM off and on (Startup needed afterwards)
_ATTEMPTS: Final = 8


class SwtpmError(RuntimeError):
    """swtpm is missing, did not start, or its control channel failed."""


def _free_port_pair() -> int:
    """A port P with P and P+1 both bindable on 127.0.0.1 right now."""
    for _ in range(64):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise SwtpmError("no pair of consecutive free loopback ports")


class SwtpmProcess:
    """Start with ``start()`` (or ``with``); ``tcti_config`` names it for tpm2-pytss; ``stop()`` ends it."""

    def __init__(self, state_dir: Path | None = None, *, executable: str = "swtpm") -> None:
        found = shutil.which(executable)
        if found is None:
            raise SwtpmError(f"{executable!r} not found: install Debian's swtpm and swtpm-tools (scripts/setup.sh)")
        self.executable = found
        self._owned_dir = state_dir is None
        self.state_dir = Path(tempfile.mkdtemp(prefix="swtpm-")) if state_dir is None else state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti_config(self) -> str:
        return f"host=127.0.0.1,port={self.port}"

    def start(self, timeout: float = 10.0) -> SwtpmProcess:
        last = ""
        for _ in range(_ATTEMPTS):
            self.port = _free_port_pair()
            log = self.state_dir / "swtpm.log"
            with open(self.state_dir / "swtpm.err", "wb") as err:
                self._proc = subprocess.Popen(
                    [self.executable, "socket", "--tpm2", "--tpmstate", f"dir={self.state_dir}",
                     "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                     "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                     "--flags", "not-need-init,startup-clear", "--log", f"file={log},level=1"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                )
            if self._wait_listening(timeout):
                return self
            last = self._reap()
        raise SwtpmError(f"swtpm did not start after {_ATTEMPTS} attempts: {last}")

    def _wait_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False  # exited: most likely a port was taken meanwhile
            try:
                with socket.create_connection(("127.0.0.1", self.port + 1), timeout=1.0):
                    return True
            except OSError:
                time.sleep(0.01)
        return False

    def _reap(self) -> str:
        proc, self._proc = self._proc, None
        if proc is None:
            return ""
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        texts = (p.read_text(errors="replace") for p in (self.state_dir / "swtpm.err", self.state_dir / "swtpm.log")
                 if p.exists())
        return " ".join(t.strip() for t in texts)[-500:]

    def power_cycle(self) -> None:
        """Power the TPM off and on through the control channel; the caller then sends TPM2_Startup."""
        with socket.create_connection(("127.0.0.1", self.port + 1), timeout=5.0) as ctrl:
            ctrl.sendall(struct.pack(">II", CMD_INIT, 0))
            reply = b""
            while len(reply) < 4:
                chunk = ctrl.recv(4 - len(reply))
                if not chunk:
                    raise SwtpmError("control channel closed during CMD_INIT")
                reply += chunk
        result = struct.unpack(">I", reply)[0]
        if result != 0:
            raise SwtpmError(f"CMD_INIT failed with TPM result {result:#x}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._owned_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> SwtpmProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
