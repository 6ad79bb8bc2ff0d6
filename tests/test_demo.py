"""``make demo`` installs no developer tools; ``attest-hub demo`` says what it runs: its fleet size is the one
asked for, and every row's expectation is what the hub and the broker actually did (the data-mitm row here:
the broker refuses the altered copies)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hub.cli.demo import EXPECTED, run_demo

REPO = Path(__file__).resolve().parent.parent


def _row(output: str, device_id: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith(f"│ {device_id} "))
    return [cell.strip() for cell in line.strip("│").split("│")]


@pytest.mark.broker
@pytest.mark.slow
def test_the_demo_enrols_the_fleet_size_asked_for_and_its_expectations_hold(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(16, 5, tmp_path / "state") == 0
    output = capsys.readouterr().out
    assert "Fleet attestation demo: 16 devices" in output
    assert "enrolled 16 devices (" in output
    assert "of 16 devices quarantined" in output
    mitm = [line.split("│")[1].strip() for line in output.splitlines() if "│ data-mitm " in line]
    assert mitm, output
    cells = _row(output, mitm[0])
    ok, rejected = cells[6].split("/")
    # the man in the middle's copies never reach the hub: the broker's ACL refuses them (0x87); the hub sees gaps
    assert int(ok) > 0 and int(rejected) == 0, cells
    assert cells[7] == "data-gap", cells
    assert "refused by the broker" in EXPECTED["data-mitm"] and "data gap" in EXPECTED["data-mitm"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_installs_the_runtime_extras_only_and_make_test_the_developer_tools(tmp_path: Path) -> None:
    def planned(target: str) -> list[str]:
        result = subprocess.run(["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True,
                                text=True, timeout=60, check=True)
        return [line for line in result.stdout.splitlines() if "pip install" in line]

    (demo,) = planned("demo")
    assert "[tpm,postgres]" in demo and "dev" not in demo
    (test,) = planned("test")
    assert "dev" in test
