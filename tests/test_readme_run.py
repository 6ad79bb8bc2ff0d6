"""README "Running it for real" runs as written, from a directory outside the repository; ``broker run`` checks."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hub.broker.process import free_port
from hub.cli.main import cli
from hub.crypto import pki

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"^## Running it for real\n.*?^```sh\n(.*?)^```", text, flags=re.S | re.M)
    assert match is not None
    return match.group(1)


@pytest.mark.broker
@pytest.mark.slow
def test_running_it_for_real_works_as_written_from_any_directory(tmp_path: Path) -> None:
    script = readme_block()
    assert script.count("1883") >= 3
    script = script.replace("1883", str(free_port()))  # the only change: a free port instead of the default
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTEST_HUB_", "PYTHONPATH"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", COLUMNS="200", TMPDIR=str(tmp_path))
    proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # a hub or broker left behind by a failed step
    assert proc.returncode == 0, output[-6000:]
    assert "Traceback" not in output
    listing = output.rsplit("device-sim:", 1)[-1]
    assert "quarantined" in listing and "env-sensor-" in listing  # the tampered and rollback devices
    assert "no policies" not in listing and "env-sensor@" in listing  # the shipped policies were published
    assert (tmp_path / "var" / "broker" / "mosquitto.db").exists()  # the broker ran from this directory


def test_broker_run_needs_a_mode_and_prod_needs_its_tls_material(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["broker", "run", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "give --dev or --prod" in result.output
    result = runner.invoke(cli, ["broker", "run", "--prod", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--prod needs --pki" in result.output
    result = runner.invoke(cli, ["broker", "run", "--prod", "--pki", str(tmp_path / "none"),
                                 "--data-dir", str(tmp_path)])
    assert result.exit_code == 3 and "missing TLS material" in result.output
    result = runner.invoke(cli, ["broker", "run", "--dev", "--host", "0.0.0.0", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--dev listens on 127.0.0.1 only" in result.output


def test_broker_run_prod_renders_mutual_tls_and_the_acl_for_each_worker(tmp_path: Path) -> None:
    ca = pki.create_ca(tmp_path / "pki", "Test CA")
    pki.issue_server_cert(ca, tmp_path / "pki")
    result = CliRunner().invoke(cli, ["broker", "run", "--prod", "--pki", str(tmp_path / "pki"), "--port", "8884",
                                      "--hub-workers", "2", "--data-dir", str(tmp_path / "b"), "--print-config"])
    assert result.exit_code == 0, result.output
    assert "listener 8884 0.0.0.0" in result.output
    assert f"cafile {tmp_path / 'pki' / 'ca.crt'}" in result.output
    assert "require_certificate true" in result.output
    acl = (tmp_path / "b" / "acl").read_text()
    assert "user hub-w0" in acl and "user hub-w1" in acl and "user hub-w2" not in acl
    assert "{" not in result.output  # every placeholder filled


def test_files_names_the_shipped_folders() -> None:
    result = CliRunner().invoke(cli, ["files", "firmware_manifests"])
    assert result.exit_code == 0
    path = Path(result.output.strip())
    assert (path / "keys" / "demo-operator.pub.pem").is_file()
    assert sorted(p.parent.name for p in path.glob("*/manifest.cose")) == [
        "edge-gateway", "env-sensor", "psa-sensor", "smart-meter"]
    assert CliRunner().invoke(cli, ["files", "nothing"]).exit_code == 2


def test_broker_run_on_a_taken_port_says_so(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["broker", "run", "--dev", "--port", str(port), "--data-dir",
                                          str(tmp_path)])
    assert result.exit_code == 3, result.output
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.output
