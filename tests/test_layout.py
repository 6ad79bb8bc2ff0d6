"""The package layout: layers checked by import-linter, curated public names, a README per package."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The public names of each package, pinned: a change here is a change of the package's interface.
PUBLIC = {
    "hub.cli": ["main"],
    "hub.server": ["HubWorker", "LocalHub", "configure_logging", "enrol_all", "prepare_state", "run_workers"],
    "hub.anomaly": ["AnomalyWatch", "Assessment", "DetectorConfig", "DeviceStats", "KINDS", "PassResult", "assess",
                    "detector_config", "fleet_counts"],
    "hub.appraisal": ["BatchOutcome", "Command", "DUPLICATE", "Enrolment", "FleetReport", "OperationError", "Outcome",
                      "Pipeline", "ProposalError", "REJECTED", "RateLimiter", "build_report", "enrol", "epoch_message",
                      "import_manifest", "import_policy", "revoke", "set_quarantine", "what_if"],
    "hub.reference": ["Component", "IdentityError", "Manifest", "ManifestError", "Policy", "PolicyError",
                      "References", "Release", "Tier", "TrustVector", "default_policy", "load_policy", "parse_source",
                      "parse_x5chain", "sign_manifest", "tier_of", "verify_chain", "verify_manifest"],
    "hub.broker": ["BrokerAddress", "BrokerEnforcer", "EnforcementError", "MosquittoProcess", "MqttTransport",
                   "TransportError", "enforcer_from_settings", "free_port", "render_acl"],
    "hub.crypto": ["CborError", "CoseError", "HubKeyError", "HubKeys", "KeyFileError", "PkiError", "PrivateKey",
                   "PublicKey", "Sign1", "challenge_nonce", "check_nonce", "decode_sign1", "epoch_nonce", "fingerprint",
                   "init_state", "load_hub_keys", "loads_strict", "sign1", "validate_device_id", "verify_sign1"],
    "hub.store": ["DeviceRecord", "Store", "StoreError"],
    "hub.schemes": ["EvidenceScheme", "SchemeRegistry", "default_schemes"],
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_each_package_exports_exactly_its_curated_names(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(PUBLIC[package])
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


def test_every_package_has_a_readme_naming_its_modules() -> None:
    packages = [p for p in (ROOT / "hub").iterdir() if (p / "__init__.py").exists()]
    assert {p.name for p in packages} >= {"cli", "server", "appraisal", "schemes", "reference", "broker", "crypto",
                                          "anomaly", "store"}
    for package in packages:
        readme = package / "README.md"
        assert readme.exists(), f"{package} has no README.md"
        text = readme.read_text()
        for module in package.glob("*.py"):
            if module.name != "__init__.py":
                assert f"`{module.name}`" in text, f"{readme} does not name {module.name}"


def test_no_flat_modules_left_beside_the_packages() -> None:
    flat = sorted(p.name for p in (ROOT / "hub").glob("*.py"))
    assert flat == ["__init__.py", "audit.py", "config.py", "envelope.py", "resources.py", "wire.py"]


def _lint_imports() -> list[str]:
    exe = Path(sys.executable).parent / "lint-imports"
    return [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]


def test_import_layers_hold() -> None:
    result = subprocess.run([*_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


def test_import_layers_catch_an_upward_import(tmp_path: Path) -> None:
    """The contract is not vacuous: a copy of the tree with crypto importing appraisal breaks it."""
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "hub", copy / "hub", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "device_sim", copy / "device_sim", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    pki = copy / "hub" / "crypto" / "pki.py"
    pki.write_text(pki.read_text() + "\nimport hub.appraisal.pipeline  # noqa: E402\n")
    env = {"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([*_lint_imports(), "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode != 0
    assert "hub.crypto.pki -> hub.appraisal.pipeline" in result.stdout


def test_schemes_stay_pure(tmp_path: Path) -> None:
    """A scheme that reaches for the store breaks the forbidden contract, though the layers allow it."""
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "hub", copy / "hub", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "device_sim", copy / "device_sim", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    psa = copy / "hub" / "schemes" / "psa.py"
    psa.write_text(psa.read_text() + "\nimport hub.store.db  # noqa: E402\n")
    result = subprocess.run([*_lint_imports(), "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "hub.schemes.psa -> hub.store.db" in result.stdout
