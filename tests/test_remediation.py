"""Closed-loop remediation without a broker: which release is named, the remediate command and its
audit entry, the simulator installing it, and the fresh evidence that releases the device."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sim import keys as sim_keys
from device_sim.commands import Epoch
from device_sim.records import Profile
from hub import wire
from hub.appraisal import transitions
from hub.appraisal.messages import Command
from hub.appraisal.remediation import plan_remediation
from hub.crypto.keys import public_pem
from hub.reference import trust
from hub.reference.manifests import Component, Manifest, Release
from hub.reference.policy import Policy
from hub.reference.trust import TrustVector
from tests.e2e import signed_payload
from tests.helpers import EPOCH, HubEnv, build_env, incoming, only, publishes_on

TAMPERED = TrustVector(instance_identity=2, executables=trust.EXEC_UNRECOGNIZED)


def _manifest(*releases: tuple[str, int, str], min_svn: int = 2) -> Manifest:
    comp = (Component("app", b"\x00" * 32),)
    return Manifest("c", 1, min_svn, tuple(Release(v, svn, comp, status) for v, svn, status in releases))


def test_newest_approved_release_at_or_above_every_floor_is_named() -> None:
    manifest = _manifest(("1.0.0", 1, "approved"), ("1.1.0", 2, "approved"), ("1.3.0", 4, "revoked"),
                         ("1.2.0", 3, "approved"), ("1.4.0", 5, "deprecated"))
    plan = plan_remediation(TAMPERED, manifest, Policy("c"), svn_high_water=0)
    assert plan is not None and (plan.release, plan.svn, plan.floor) == ("1.2.0", 3, 2)


def test_no_remediation_when_firmware_is_not_the_problem() -> None:
    manifest = _manifest(("1.2.0", 3, "approved"))
    config_only = TrustVector(instance_identity=2, executables=2, configuration=trust.CONFIG_CONTRAINDICATED)
    assert plan_remediation(config_only, manifest, Policy("c"), 0) is None
    assert plan_remediation(TrustVector(instance_identity=2), manifest, Policy("c"), 0) is None
    assert plan_remediation(TAMPERED, None, Policy("c"), 0) is None


def test_no_remediation_when_no_approved_release_reaches_the_floor() -> None:
    manifest = _manifest(("1.1.0", 2, "approved"), ("1.2.0", 3, "revoked"))
    assert plan_remediation(TAMPERED, manifest, Policy("c", min_svn=3), 0) is None
    assert plan_remediation(TAMPERED, manifest, Policy("c"), svn_high_water=3) is None  # proved svn 3 before
    assert plan_remediation(TAMPERED, manifest, Policy("c", allowed_versions=("9.9.9",)), 0) is None


@pytest.fixture
def env(tmp_path: Path) -> Iterator[HubEnv]:
    hub = build_env(tmp_path)
    yield hub
    hub.close()


def _commands(outcome: object, env: HubEnv) -> list[dict[object, object]]:
    return [signed_payload(p.payload, env.keys) for p in publishes_on(outcome, wire.COMMAND)]  # type: ignore[arg-type]


def test_quarantine_for_firmware_sends_a_signed_remediate_command_and_records_it(env: HubEnv) -> None:
    device = env.add_device("smart-meter-0001", profile=Profile.TAMPERED)
    pipeline = env.pipeline()
    pipeline.decider.remediation = True
    outcome = pipeline.process([incoming(device.device_id, device.make_evidence(env.epoch_nonce))])
    assert only(outcome).action == "quarantine"
    commands = _commands(outcome, env)
    assert [c[wire.CMD_TYPE] for c in commands] == [wire.COMMAND_QUARANTINE, wire.COMMAND_REMEDIATE]
    assert commands[1][wire.CMD_RELEASE_NAME] == "1.2.0" and commands[1][wire.CMD_SEQ] > commands[0][wire.CMD_SEQ]
    with env.store.reading() as conn:
        rows = [r for r in env.store.audit_rows(conn) if r["device_id"] == device.device_id]
    remediating = [json.loads(r["detail"]) for r in rows if r["action"] == "remediating"]
    assert remediating and remediating[0]["release"] == "1.2.0" and remediating[0]["evidence"] == "1:1"
    assert remediating[0]["reason"] == only(outcome).problems[0]


def test_without_the_remediation_setting_only_the_quarantine_is_sent(env: HubEnv) -> None:
    device = env.add_device("smart-meter-0001", profile=Profile.TAMPERED)
    outcome = env.pipeline().process([incoming(device.device_id, device.make_evidence(env.epoch_nonce))])
    assert [c[wire.CMD_TYPE] for c in _commands(outcome, env)] == [wire.COMMAND_QUARANTINE]


def test_simulated_device_installs_the_release_reboots_and_its_fresh_evidence_releases_it(env: HubEnv) -> None:
    device = env.add_device("smart-meter-0001", profile=Profile.ROLLBACK)
    device.hub_key = sim_keys.load_hub_public_key(public_pem(env.keys.public_key).encode())
    device.set_epoch(Epoch(EPOCH, env.epoch_nonce, 0))
    pipeline = env.pipeline()
    pipeline.decider.remediation = True
    first = pipeline.process([incoming(device.device_id, device.evidence_due()[0])])
    answers = [device.handle_command(p.payload) for p in publishes_on(first, wire.COMMAND)]
    assert all(a.accepted for a in answers) and device.version == "1.2.0" and device.bootcount == 2
    assert device.quarantined, "a remediated device waits for its release"
    fresh = answers[-1].evidence
    assert fresh is not None
    second = pipeline.process([incoming(device.device_id, fresh)])
    assert only(second).action == "release" and env.device(device.device_id).status == transitions.TRUSTED
    for message in publishes_on(second, wire.COMMAND):
        device.handle_command(message.payload)
    assert not device.quarantined


def test_compromised_device_verifies_but_ignores_state_commands(env: HubEnv) -> None:
    device = env.add_device("smart-meter-0001", profile=Profile.IGNORES_COMMANDS)
    device.hub_key = sim_keys.load_hub_public_key(public_pem(env.keys.public_key).encode())
    for seq, kind in enumerate((wire.COMMAND_QUARANTINE, wire.COMMAND_REMEDIATE), start=1):
        signed = Command(device.device_id, kind, seq, 0, 2**40, "x", release_name="1.2.0").sign(
            env.keys.signing_key, env.keys.kid)
        assert device.handle_command(signed).accepted
    assert not device.quarantined and device.remediations == () and device.version == "1.2.0"
    assert device.bootcount == 1


def test_data_verdicts_after_a_firmware_quarantine_do_not_block_its_automatic_release() -> None:
    from hub.reference.policy import Policy as P
    from hub.reference.trust import Tier

    auto = P("c", release="auto")
    quarantined = transitions.after_verdict(transitions.TRUSTED, False, Tier.CONTRAINDICATED, auto)
    data = transitions.after_verdict(quarantined.status, quarantined.hold, Tier.CONTRAINDICATED, auto, platform=False)
    assert data.status == transitions.QUARANTINED and not data.hold
    remediated = transitions.after_verdict(data.status, data.hold, Tier.AFFIRMING, auto)
    assert remediated.action == "release"
