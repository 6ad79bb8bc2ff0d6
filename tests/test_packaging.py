"""The wheel carries everything a user needs, and works in a clean virtual environment outside the repository.

One module-scoped wheel build (from a copy of the source tree, so the checkout gets no build/ folder) and one
clean venv; ``attest-hub demo`` then runs there at a reduced size. Without the ``tpm`` extra the demo must leave
the TPM gateways out with one line, never a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
_SKIP = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", "var", ".*_cache",
                               "bench", "tests")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ATTEST_HUB_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source") / "src"
    shutil.copytree(REPO, source, ignore=_SKIP)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
                   check=True, env=_clean_env(), cwd=out, capture_output=True, timeout=300)
    (built,) = out.glob("fleet_attestation_hub-*.whl")
    return built


@pytest.fixture(scope="module")
def clean_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    where = tmp_path_factory.mktemp("venv") / "env"
    venv.create(where, with_pip=True)
    result = subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                            env=_clean_env(), cwd=where.parent, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    yield where / "bin"


def test_the_wheel_carries_configs_manifests_keys_dashboard_migrations_and_markers(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        "hub/_data/broker_config/dev.conf", "hub/_data/broker_config/prod.conf", "hub/_data/broker_config/acl",
        "hub/_data/firmware_manifests/keys/demo-operator.pub.pem", "hub/_data/docs/grafana-dashboard.json",
        "hub/store/alembic.ini", "hub/store/migrations/script.py.mako", "hub/store/migrations/env.py",
        "hub/py.typed", "device_sim/py.typed",
        "hub/_data/deploy/hub.toml", "hub/_data/deploy/systemd/attest-hub.service", "hub/_data/deploy/compose.yaml",
        "hub/_data/deploy/systemd/mosquitto.service.d/attest-hub.conf", "hub/_data/deploy/Containerfile",
    }
    for device_class in ("env-sensor", "smart-meter", "edge-gateway", "psa-sensor"):
        wanted |= {f"hub/_data/firmware_manifests/{device_class}/{name}"
                   for name in ("manifest.toml", "manifest.cose", "policy.toml")}
    for migration in (REPO / "hub" / "store" / "migrations" / "versions").glob("*.py"):
        wanted.add(f"hub/store/migrations/versions/{migration.name}")
    assert sorted(wanted - names) == []
    assert any(n.endswith(".dist-info/LICENSE") or "/licenses/LICENSE" in n for n in names)
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


def test_both_tools_report_their_version(clean_venv: Path, tmp_path: Path) -> None:
    for tool in ("attest-hub", "device-sim"):
        result = subprocess.run([str(clean_venv / tool), "--version"], cwd=tmp_path, env=_clean_env(),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{tool}, version ")
    shipped = subprocess.run([str(clean_venv / "attest-hub"), "files", "deploy"], cwd=tmp_path, env=_clean_env(),
                             capture_output=True, text=True, timeout=60)
    assert shipped.returncode == 0 and "site-packages" in shipped.stdout
    assert (Path(shipped.stdout.strip()) / "systemd" / "attest-hub.sysusers.conf").is_file()


@pytest.mark.broker
def test_the_demo_runs_from_the_installed_wheel_outside_the_repository(clean_venv: Path, tmp_path: Path) -> None:
    tpm_usable = subprocess.run([str(clean_venv / "python"), "-c", "import tpm2_pytss"], capture_output=True,
                                env=_clean_env(), cwd=tmp_path, timeout=60).returncode == 0
    result = subprocess.run([str(clean_venv / "attest-hub"), "demo", "--devices", "8", "--seconds", "5"],
                            cwd=tmp_path, env=_clean_env(COLUMNS="200"), capture_output=True, text=True, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "Traceback" not in output
    assert "Verdicts (hub)" in output
    assert "psa-sensor-" in output  # the PSA platforms need no extra
    left_out = [line for line in output.splitlines() if "TPM-backed gateways left out" in line]
    if tpm_usable and shutil.which("swtpm"):
        assert left_out == [] and "edge-gateway-" in output
    else:
        assert len(left_out) == 1, output[-3000:]
        assert "edge-gateway-" not in output
    assert str(REPO) not in output  # nothing came from the checkout
