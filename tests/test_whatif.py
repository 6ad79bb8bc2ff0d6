"""What-if appraisal: which devices a proposed manifest or policy would move, changing nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import Result
from helpers import HubEnv, build_env, incoming, run_cli

from device_sim import firmware
from device_sim.records import Profile
from hub import wire
from hub.appraisal.whatif import Outcome, Proposal, ProposalError, load_proposal, what_if
from hub.crypto.keys import load_private_file
from hub.reference.manifests import Manifest, sign_manifest
from hub.reference.policy import load_policy
from hub.schemes import default_schemes
from hub.server.localhub import MANIFESTS_DIR

OPERATOR_KEY = MANIFESTS_DIR / "keys" / "demo-operator.key.pem"
ENV_POLICY = (MANIFESTS_DIR / "env-sensor" / "policy.toml").read_text()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[HubEnv]:
    hub = build_env(tmp_path)
    hub.add_device("env-sensor-0001", firmware.ENV_SENSOR)
    hub.add_device("env-sensor-0002", firmware.ENV_SENSOR, version="1.1.0")
    hub.add_device("env-sensor-0003", firmware.ENV_SENSOR, Profile.TAMPERED)
    hub.add_device("env-sensor-0004", firmware.ENV_SENSOR)  # never attested
    hub.add_device("smart-meter-0001", firmware.SMART_METER, version="1.1.0")
    pipeline = hub.pipeline()
    for device_id in ("env-sensor-0001", "env-sensor-0002", "env-sensor-0003", "smart-meter-0001"):
        pipeline.process([incoming(device_id, hub.devices[device_id].make_evidence(hub.epoch_nonce))])
    try:
        yield hub
    finally:
        hub.close()


def run(env: HubEnv, *args: str) -> Result:
    result: Result = run_cli(env, *args)
    return result


def next_manifest(env: HubEnv, status: str, version: str = "1.1.0", device_class: str = "env-sensor") -> Manifest:
    current = env.references.manifest(device_class)
    assert current is not None
    releases = tuple(replace(r, status=status) if r.version == version else r for r in current.releases)
    return Manifest(device_class, current.sequence + 1, current.min_svn, releases)


def snapshot(env: HubEnv) -> tuple[object, ...]:
    with env.store.reading() as conn:
        return (tuple((d.device_id, d.status, d.tier, d.svn_high_water) for d in env.store.list_devices(conn)),
                env.store.count_verdicts(conn), len(env.store.audit_rows(conn)),
                tuple(r["sequence"] for r in env.store.manifest_history(conn)))


def outcomes(env: HubEnv, proposal: Proposal) -> dict[str, Outcome]:
    return {o.device_id: o for o in what_if(env.store, env.references, default_schemes(), proposal)}


def test_revoking_a_release_moves_only_its_devices_and_changes_nothing(env: HubEnv) -> None:
    before = snapshot(env)
    result = outcomes(env, Proposal(manifest=next_manifest(env, wire.RELEASE_REVOKED)))
    assert set(result) == {"env-sensor-0001", "env-sensor-0002", "env-sensor-0003", "env-sensor-0004"}
    moved = result["env-sensor-0002"]
    assert moved.changed and (moved.current_status, moved.proposed_status) == ("trusted", "quarantined")
    assert "release 1.1.0 is revoked" in moved.why and moved.action == "quarantine"
    assert not result["env-sensor-0001"].changed
    assert not result["env-sensor-0003"].changed and result["env-sensor-0003"].current_status == "quarantined"
    assert result["env-sensor-0004"].note == "no platform evidence yet"
    assert snapshot(env) == before, "what-if writes nothing"


def test_the_current_references_as_a_proposal_change_nothing(env: HubEnv) -> None:
    same = next_manifest(env, wire.RELEASE_APPROVED)
    assert not any(o.changed for o in outcomes(env, Proposal(manifest=same)).values())


def test_deprecation_warns_and_a_policy_can_quarantine(env: HubEnv) -> None:
    deprecated = outcomes(env, Proposal(manifest=next_manifest(env, wire.RELEASE_DEPRECATED)))
    assert deprecated["env-sensor-0002"].proposed_status == "warning"
    policy = load_policy(ENV_POLICY.replace("version = 1", 'version = 2\nallowed_versions = ["1.1.0"]'))
    result = outcomes(env, Proposal(policy=policy))
    assert result["env-sensor-0001"].proposed_status == "quarantined"
    assert "not allowed by policy env-sensor@2" in result["env-sensor-0001"].why
    assert not result["env-sensor-0002"].changed


def test_a_policy_that_affirms_warnings_releases_nobody_held(env: HubEnv) -> None:
    """A quarantined device stays quarantined when the proposal still contraindicates it."""
    policy = load_policy(ENV_POLICY.replace("version = 1", "version = 2").replace('warning = "warn"',
                                                                                  'warning = "affirm"'))
    result = outcomes(env, Proposal(policy=policy))
    assert result["env-sensor-0003"].proposed_status == "quarantined"


def test_evidence_that_no_longer_verifies_is_reported_not_appraised(env: HubEnv) -> None:
    other = env.devices["env-sensor-0004"].public_key_pem.decode()
    with env.store.transaction() as conn:
        conn.exec_driver_sql("UPDATE device SET public_key_pem = ? WHERE device_id = 'env-sensor-0002'", (other,))
    result = outcomes(env, Proposal(manifest=next_manifest(env, wire.RELEASE_REVOKED)))
    assert not result["env-sensor-0002"].changed
    assert "no longer verifies" in result["env-sensor-0002"].note


def test_stale_or_untrusted_proposals_are_refused(env: HubEnv, tmp_path: Path) -> None:
    current = env.references.manifest("env-sensor")
    assert current is not None
    with pytest.raises(ProposalError, match="not above"):
        load_proposal(("m.cose", current.signed), None, env.references, env.keys.operator_keys)
    with pytest.raises(ProposalError, match="untrusted key"):
        from hub.crypto.keys import generate_p256

        load_proposal(("m.cose", sign_manifest(next_manifest(env, "revoked"), generate_p256())), None,
                      env.references, env.keys.operator_keys)
    with pytest.raises(ProposalError, match="nothing proposed"):
        load_proposal(None, None, env.references, env.keys.operator_keys)


def test_cli_whatif_signed_manifest_and_ci_gate(env: HubEnv, tmp_path: Path) -> None:
    signed = tmp_path / "env-2.cose"
    signed.write_bytes(sign_manifest(next_manifest(env, wire.RELEASE_REVOKED), load_private_file(OPERATOR_KEY)))
    result = run(env, "whatif", "--manifest", str(signed), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["changes"] == 1 and data["devices"] == 4
    assert [o["device_id"] for o in data["outcomes"]] == ["env-sensor-0002"]
    assert run(env, "whatif", "--manifest", str(signed), "--fail-on-change").exit_code == 1
    everyone = json.loads(run(env, "whatif", "--manifest", str(signed), "--all", "--json").stdout)
    assert len(everyone["outcomes"]) == 4
    human = run(env, "whatif", "--manifest", str(signed))
    assert "1 of 4" in human.stdout


def test_cli_whatif_policy_source_and_errors(env: HubEnv, tmp_path: Path) -> None:
    policy = tmp_path / "meter-2.toml"
    policy.write_text((MANIFESTS_DIR / "smart-meter" / "policy.toml").read_text()
                      .replace("version = 1", "version = 2").replace('warning = "warn"', 'warning = "quarantine"'))
    deprecated = tmp_path / "meter-2-manifest.toml"
    import tomli_w

    from hub.reference.manifests import to_source

    deprecated.write_text(tomli_w.dumps(to_source(next_manifest(env, "deprecated", "1.1.0", "smart-meter"))))
    both = json.loads(run(env, "whatif", "--manifest", str(deprecated), "--policy", str(policy), "--json").stdout)
    assert both["changes"] == 1 and both["outcomes"][0]["proposed_status"] == "quarantined"
    assert run(env, "whatif").exit_code == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('device_class = "smart-meter"\nversion = 3\ndebug = "maybe"\n')
    refused = run(env, "whatif", "--policy", str(bad))
    assert refused.exit_code == 1 and "line 3" in refused.output
    stale = tmp_path / "stale.toml"
    stale.write_text((MANIFESTS_DIR / "smart-meter" / "policy.toml").read_text())
    with env.store.transaction() as conn:
        env.store.save_policy(conn, "smart-meter", 2, policy.read_text())
    assert run(env, "whatif", "--policy", str(stale)).exit_code == 1


def test_cli_whatif_into_a_pipe_keeps_one_device_per_line(env: HubEnv, tmp_path: Path) -> None:
    """Off a terminal nothing is wrapped or cut: the summary and each device on one line, the reason whole."""
    from click.testing import CliRunner

    from hub.cli.main import cli
    from hub.server.localhub import DEMO_OPERATOR_KEY

    long_id = "env-sensor-building-7-floor-3-east-wing-rack-12-slot-04"
    env.add_device(long_id, firmware.ENV_SENSOR, version="1.1.0")
    env.pipeline().process([incoming(long_id, env.devices[long_id].make_evidence(env.epoch_nonce))])
    signed = tmp_path / "env-2.cose"
    signed.write_bytes(sign_manifest(next_manifest(env, wire.RELEASE_REVOKED), load_private_file(OPERATOR_KEY)))

    def whatif(*extra: str, columns: str | None = None) -> str:
        result = CliRunner().invoke(cli, ["--state-dir", str(env.settings.state_dir), "whatif", "--manifest",
                                          str(signed), *extra],
                                    env={"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY), "COLUMNS": columns},
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return str(result.stdout)

    outcomes = {o["device_id"]: o for o in json.loads(whatif("--json"))["outcomes"]}
    assert set(outcomes) == {"env-sensor-0002", long_id}
    piped = whatif().splitlines()  # CliRunner's standard output is no terminal
    assert len(piped) == 1 + 1 + 2, piped  # the summary, the header, one line per device that would change
    assert piped[0].startswith("What if ") and piped[0].endswith("would change status"), piped
    (line,) = [line for line in piped if long_id in line]
    assert outcomes[long_id]["why"] in line and len(line) > 100, piped
    narrow = whatif(columns="80").splitlines()  # a terminal's width is still kept
    assert all(len(line) <= 80 for line in narrow), narrow
