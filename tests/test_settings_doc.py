"""The settings reference (docs/SETTINGS.md) is generated from the Settings class and kept current; ports checked."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from hub import config
from hub.config import SETTING_HELP, ConfigError, Settings, load_settings, settings_reference

ROOT = Path(__file__).resolve().parents[1]
NAMES = [f.name for f in fields(Settings)]


def test_every_setting_is_documented_and_no_documentation_is_stale() -> None:
    assert sorted(set(NAMES) - set(SETTING_HELP)) == []
    assert sorted(set(SETTING_HELP) - set(NAMES)) == []
    assert all(len(text) > 20 for text in SETTING_HELP.values())


def test_a_setting_without_documentation_fails_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "SETTING_HELP", {k: v for k, v in SETTING_HELP.items() if k != "batch_wait_ms"})
    with pytest.raises(ConfigError, match="batch_wait_ms"):
        settings_reference()


def test_docs_settings_md_is_the_generated_reference() -> None:
    text = (ROOT / "docs" / "SETTINGS.md").read_text()
    assert text == settings_reference(), "regenerate: attest-hub config reference > docs/SETTINGS.md"
    for name in NAMES:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"`ATTEST_HUB_{name.upper()}`" in row


def test_the_annotated_example_loads_and_names_every_setting() -> None:
    path = ROOT / "deploy" / "hub.toml"
    settings = load_settings(path, environ={})
    assert settings.workers == 2 and settings.broker_port == 8883
    assert settings.worker_tls(1) == ("/etc/attest-hub/pki/hub-w1.crt", "/etc/attest-hub/pki/hub-w1.key")
    text = path.read_text()
    tomllib.loads(text)
    for name in NAMES:
        assert f"\n{name} = " in text or f"\n# {name} = " in text, f"deploy/hub.toml does not mention {name}"


@pytest.mark.parametrize(("values", "message"), [
    ({"ATTEST_HUB_BROKER_PORT": "70000"}, "broker_port: 70000 is not a TCP port"),
    ({"ATTEST_HUB_BROKER_PORT": "0"}, "broker_port: 0 is not a TCP port"),
    ({"ATTEST_HUB_METRICS_PORT": "70000"}, "metrics_port: 70000 is not a TCP port"),
    ({"ATTEST_HUB_METRICS_PORT": "65535", "ATTEST_HUB_WORKERS": "2"}, "worker N listens on metrics_port"),
    ({"ATTEST_HUB_METRICS_PORT": "-1"}, "metrics_port: '-1' is not allowed: expected a whole number, 0 or more"),
])
def test_invalid_ports_are_refused(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, environ=values)


def test_valid_ports_and_no_metrics_endpoint_are_accepted() -> None:
    assert load_settings(None, environ={"ATTEST_HUB_METRICS_PORT": "65534", "ATTEST_HUB_WORKERS": "2"}).workers == 2
    assert load_settings(None, environ={"ATTEST_HUB_METRICS_PORT": "0"}).metrics_port == 0


@pytest.mark.parametrize("name", ["health_port", "manifests_dir", "policies_dir",
                                  "publish_raw_evidence"])
def test_removed_unused_settings_are_unknown(name: str) -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings(None, environ={f"ATTEST_HUB_{name.upper()}": "1"})


def test_config_file_errors_speak_of_settings_and_sections(tmp_path) -> None:  # type: ignore[no-untyped-def]
    negative = tmp_path / "negative.toml"
    negative.write_text("[hub]\nworkers = -3\n")
    with pytest.raises(ConfigError, match="workers: -3 is not allowed: expected a whole number, 0 or more"):
        load_settings(negative, environ={})
    other = tmp_path / "other.toml"
    other.write_text("[hub]\nworkers = 2\n[other]\nx = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[other\] \(every setting goes in \[hub\]\)"):
        load_settings(other, environ={})
