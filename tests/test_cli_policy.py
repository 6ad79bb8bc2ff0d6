"""``attest-hub policy validate / show / publish / history`` without a broker (publishing is in test_cli_publish)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from helpers import HubEnv, env_fixture, run_cli

from hub.cli.main import cli
from hub.server.localhub import MANIFESTS_DIR

ENV_POLICY = MANIFESTS_DIR / "env-sensor" / "policy.toml"


env = env_fixture()


def run(env: HubEnv, *args: str) -> Result:
    result: Result = run_cli(env, *args)
    return result


def test_the_repository_policies_are_valid(env: HubEnv) -> None:
    files = sorted(str(p) for p in MANIFESTS_DIR.glob("*/policy.toml"))
    result = run(env, "policy", "validate", *files, "--json")
    assert result.exit_code == 0, result.output
    refs = {r["ref"] for r in json.loads(result.stdout)}
    assert {"env-sensor@1", "smart-meter@1"} <= refs


@pytest.mark.parametrize("body, line, words", [
    ('device_class = "x"\nversion = 1\n\n[actions]\nwarning = "explode"\n', 5, "action must be one of"),
    ('device_class = "x"\nversion = 1\nmin_svn = -1\n', 3, "non-negative integer"),
    ('device_class = "x"\nversion = 1\nsecure_boot = "yes"\n', 3, "true or false"),
    ('device_class = "x"\n\nverison = 2\n', 3, "unknown setting"),
    ('device_class = "x"\n[runtime]\nallowed_processes = "init"\n', 3, "list of strings"),
    ('device_class = "x"\nrequired_evidence = ["firmware", "dna"]\n', 2, "unknown evidence kind"),
    ('device_class = "x"\nversion = = 1\n', 2, "not valid TOML"),
])
def test_validate_names_the_line_of_each_error(env: HubEnv, tmp_path: Path, body: str, line: int,
                                               words: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(body)
    result = run(env, "policy", "validate", str(path))
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{path}:{line}: ") and words in result.stdout, result.stdout
    data = json.loads(run(env, "policy", "validate", str(path), "--json").stdout)
    assert data[0]["line"] == line and not data[0]["valid"]


def test_publish_stores_versions_and_refuses_an_older_one(env: HubEnv, tmp_path: Path) -> None:
    v2 = tmp_path / "v2.toml"
    v2.write_text(ENV_POLICY.read_text().replace("version = 1", "version = 2").replace("debug = \"disabled\"",
                                                                                      'debug = "any"'))
    result = run(env, "policy", "publish", "--no-announce", str(v2), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"published": "env-sensor@2", "announced": False}
    again = run(env, "policy", "publish", "--no-announce", str(v2))
    assert again.exit_code == 1 and "not newer" in again.output
    older = run(env, "policy", "publish", "--no-announce", str(ENV_POLICY))
    assert older.exit_code == 1
    shown = json.loads(run(env, "policy", "show", "--class", "env-sensor", "--json").stdout)
    assert shown["version"] == 2 and shown["debug"] == "any"
    history = json.loads(run(env, "policy", "history", "--class", "env-sensor", "--json").stdout)
    assert [h["version"] for h in history] == [1, 2]
    with env.store.reading() as conn:
        entries = [r for r in env.store.audit_rows(conn) if r["action"] == "policy"]
    assert len(entries) == 1 and json.loads(entries[0]["detail"])["version"] == 2


def test_publish_of_an_invalid_policy_is_refused_with_its_line(env: HubEnv, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('device_class = "env-sensor"\nversion = 5\ndebug = "sometimes"\n')
    result = run(env, "policy", "publish", "--no-announce", str(bad))
    assert result.exit_code == 1 and "line 3" in result.output
    history = json.loads(run(env, "policy", "history", "--json").stdout)
    assert all(h["version"] != 5 for h in history)


def test_publish_needs_a_broker_or_exits_3(env: HubEnv, tmp_path: Path) -> None:
    v2 = tmp_path / "v2.toml"
    v2.write_text(ENV_POLICY.read_text().replace("version = 1", "version = 2"))
    result = CliRunner().invoke(cli, ["--state-dir", str(env.settings.state_dir), "--broker", "127.0.0.1:9",
                                      "policy", "publish", str(v2)], catch_exceptions=False)
    assert result.exit_code == 3, result.output
    retry = CliRunner().invoke(cli, ["--state-dir", str(env.settings.state_dir), "--broker", "127.0.0.1:9",
                                     "policy", "publish", str(v2)], catch_exceptions=False)
    assert retry.exit_code == 3, "the stored version is re-announced, not refused as not newer"
    changed = tmp_path / "v2b.toml"
    changed.write_text(v2.read_text() + "\n# edited\n")
    assert run(env, "policy", "publish", str(changed)).exit_code == 1, "same version, other content: refused"


def test_show_a_file_and_a_class_without_a_policy(env: HubEnv) -> None:
    shown = json.loads(run(env, "policy", "show", str(ENV_POLICY), "--json").stdout)
    assert shown["ref"] == "env-sensor@1" and shown["allowed_processes"]
    default = json.loads(run(env, "policy", "show", "--class", "unknown-class", "--json").stdout)
    assert default["version"] == 0
    assert run(env, "policy", "show").exit_code == 2
