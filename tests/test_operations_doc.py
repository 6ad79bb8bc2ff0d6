"""docs/OPERATIONS.md runs as written: its ``sh`` blocks, in order, against a real broker and a real hub."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hub.broker.process import MosquittoProcess
from hub.store import Store

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "OPERATIONS.md"


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M)


def checker_snippet() -> str:
    """The auditor's independent checker, as printed in the doc."""
    block = next(b for b in sh_blocks(DOC.read_text()) if "<<'CHECK'" in b)
    return block.split("<<'CHECK'\n", 1)[1].rsplit("CHECK\n", 1)[0]


def test_the_walk_through_runs_as_written(broker: MosquittoProcess, tmp_path: Path) -> None:
    script = "\n".join(sh_blocks(DOC.read_text()))
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTEST_HUB_")}
    env.update(ATTEST_HUB_STATE_DIR=str(state), ATTEST_HUB_BROKER_HOST=broker.host,
               ATTEST_HUB_BROKER_PORT=str(broker.port), TMPDIR=str(tmp_path),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", COLUMNS="200")
    proc = subprocess.Popen(["bash", "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # a hub left behind by a failed step
    assert proc.returncode == 0, output[-6000:]
    assert "entries, chain intact" in output
    assert "audit chain intact" in output

    store = Store(f"sqlite:///{state / 'hub.db'}")
    try:
        with store.reading() as conn:
            devices = {d.device_id: d for d in store.list_devices(conn)}
            revoked_release = [d for d in devices.values() if d.device_class == "env-sensor"
                               and d.firmware_version == "1.1.0"]
            latest = store.latest_evidence(conn, ["firmware"])
            policies = store.policy_history(conn, "smart-meter")
    finally:
        store.close()
    assert len(devices) == 12
    assert devices["env-sensor-0003"].status == "quarantined", "the tampered device"
    assert len(revoked_release) == 2 and all(d.status == "quarantined" for d in revoked_release)
    assert all(latest[d.device_id]["manifest_ref"] == "env-sensor#3" for d in revoked_release)
    assert [p["version"] for p in policies] == [1, 2]
    report = json.loads(next(tmp_path.glob("tmp.*/report.json")).read_text())
    assert report["total"] == 12 and report["by_status"]["quarantined"] >= 4


def test_the_doc_checker_detects_tampering(tmp_path: Path) -> None:
    from test_cli_audit import exported_lines  # a real export from a hub state

    lines = exported_lines(tmp_path)
    checker = tmp_path / "check.py"
    checker.write_text(checker_snippet())

    def check(content: list[str]) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "export.jsonl"
        path.write_text("".join(line + "\n" for line in content))
        return subprocess.run([sys.executable, str(checker), str(path)], capture_output=True, text=True, check=False)

    assert check(lines).returncode == 0
    edited = json.loads(lines[2])
    edited["detail"] = edited["detail"].replace("smart-meter", "env-sensor")
    assert edited["detail"] != json.loads(lines[2])["detail"]
    assert "edited" in check([*lines[:2], json.dumps(edited), *lines[3:]]).stderr
    assert "removed or reordered" in check([*lines[:2], *lines[3:]]).stderr
    assert check([lines[0], lines[2], lines[1], *lines[3:]]).returncode == 1
