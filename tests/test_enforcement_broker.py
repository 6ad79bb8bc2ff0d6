"""Quarantine enforced by a real Mosquitto (prod.conf: mutual TLS, acl_file) on sessions already open."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from device_sim.records import Profile
from hub import wire
from hub.appraisal import transitions
from hub.appraisal.operations import set_quarantine
from hub.broker.enforcement import AclFileEnforcer
from hub.cli.main import cli
from hub.config import Settings
from hub.crypto import pki
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import open_store
from hub.server.localhub import LocalHub
from tests.enforcement_env import NOT_AUTHORIZED, make_secure_env, wait_for
from tests.test_broker_prod import TlsClient

if TYPE_CHECKING:
    from tests.conftest import ProdBroker

pytestmark = pytest.mark.broker

SUCCESS = (0x00, 0x10)  # accepted; 0x10 = accepted, no subscriber matched


def _write_config(settings: Settings, path: Path) -> Path:
    keys = ("state_dir", "broker_host", "broker_port", "broker_tls_ca", "broker_tls_cert", "broker_tls_key",
            "broker_enforcement", "broker_acl_file", "broker_pid_file")
    lines = ["[hub]"] + [f"{k} = {json.dumps(str(getattr(settings, k)))}" for k in keys if k != "broker_port"]
    lines.append(f"broker_port = {settings.broker_port}")
    lines.append(f"operator_keys = {json.dumps(list(settings.operator_keys))}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_hub_quarantine_cuts_off_the_open_session_of_a_device_that_ignores_it(
    prod_broker: ProdBroker, tmp_path: Path
) -> None:
    env = make_secure_env(prod_broker, tmp_path, "honest:1,ignores-commands:1", 2)
    bad = next(d for d in env.devices if d.profile is Profile.IGNORES_COMMANDS)
    good = next(d for d in env.devices if d.profile is Profile.HONEST)
    with LocalHub(env.settings) as hub:
        fleet = env.fleet(hub, data=True)
        with fleet:
            assert fleet.wait_for_epoch(10) is not None

            def round_until(predicate: object) -> bool:
                def step() -> bool:
                    fleet.publish_round()
                    fleet.flush(5)
                    return bool(predicate())  # type: ignore[operator]
                return wait_for(step, 30, poll=0.2)

            assert round_until(lambda: env.status(bad.device_id) == transitions.QUARANTINED)
            assert round_until(lambda: NOT_AUTHORIZED in fleet.data_reason_codes(bad.device_id))
            cut_at = fleet.data_reason_codes(bad.device_id).index(NOT_AUTHORIZED)
            verdicts_at_cut = env.verdict_count(bad.device_id)
            for _ in range(3):
                fleet.publish_round()
            assert fleet.flush(5)
            codes = fleet.data_reason_codes(bad.device_id)
            assert all(c in SUCCESS for c in codes[:cut_at])  # (the hub may even decide before the first batch)
            assert all(c == NOT_AUTHORIZED for c in codes[cut_at:]), "once cut off, every data publish is denied"
            assert not bad.quarantined, "the device ignored its signed quarantine command"
            assert any(o.command_type == wire.COMMAND_QUARANTINE for o in bad.command_log)
            assert env.connections_of(bad.device_id) == 1, "the session that was cut off is the one it opened"
            assert all(c in SUCCESS for c in fleet.data_reason_codes(good.device_id))
            assert env.status(good.device_id) == transitions.TRUSTED
            # its evidence still reaches the hub after the cut: the path back to health stays open
            assert wait_for(lambda: env.verdict_count(bad.device_id) >= verdicts_at_cut + 3, 10)
        assert AclFileEnforcer(Path(env.settings.broker_acl_file), lambda: None).quarantined() == {bad.device_id}


def test_cli_quarantine_and_release_cut_off_and_restore_an_open_session(
    prod_broker: ProdBroker, tmp_path: Path
) -> None:
    env = make_secure_env(prod_broker, tmp_path, "honest:1", 1)
    device_id = env.devices[0].device_id
    cert = pki.IssuedCert(device_id, Path(env.tls.device_certs[device_id][0]),
                          Path(env.tls.device_certs[device_id][1]), None)  # type: ignore[arg-type]
    device = TlsClient(prod_broker, cert)
    device.subscribe(wire.device_topic(device_id, wire.COMMAND))
    data, evidence = wire.device_topic(device_id, wire.DATA), wire.device_topic(device_id, wire.EVIDENCE)
    config = _write_config(env.cli_settings, tmp_path / "cli.toml")
    runner = CliRunner()
    try:
        assert device.publish(data, b"before").value in SUCCESS
        result = runner.invoke(cli, ["--config", str(config), "device", "quarantine", device_id, "--reason", "RMA"])
        assert result.exit_code == 0, result.output
        assert wait_for(lambda: device.publish(data, b"during").value == NOT_AUTHORIZED, 10)
        assert device.publish(evidence, b"still attesting").value in SUCCESS
        assert [t for t, _ in device.received()] == [wire.device_topic(device_id, wire.COMMAND)]
        result = runner.invoke(cli, ["--config", str(config), "device", "release", device_id, "--reason", "ok"])
        assert result.exit_code == 0, result.output
        assert wait_for(lambda: device.publish(data, b"after").value in SUCCESS, 10)
        assert device.mqttc.is_connected() and env.connections_of(device_id) == 1
    finally:
        device.close()
    actions = [r["action"] for r in env.audit(device_id)]
    assert actions[-2:] == [wire.COMMAND_QUARANTINE, wire.COMMAND_RELEASE]


def test_hub_start_applies_quarantines_already_in_the_database(prod_broker: ProdBroker, tmp_path: Path) -> None:
    """A crash between the commit and the ACL change is repaired when a worker starts (sync)."""
    env = make_secure_env(prod_broker, tmp_path, "honest:1", 1)
    device_id = env.devices[0].device_id
    store = open_store(env.settings)
    try:  # committed, but never applied at the broker
        set_quarantine(store, load_hub_keys(env.settings), device_id, True, "committed before a crash", 3600)
    finally:
        store.close()
    cert = pki.IssuedCert(device_id, Path(env.tls.device_certs[device_id][0]),
                          Path(env.tls.device_certs[device_id][1]), None)  # type: ignore[arg-type]
    device = TlsClient(prod_broker, cert)
    data = wire.device_topic(device_id, wire.DATA)
    try:
        assert device.publish(data, b"not yet enforced").value in SUCCESS
        with LocalHub(env.settings):
            assert wait_for(lambda: device.publish(data, b"x").value == NOT_AUTHORIZED, 10)
    finally:
        device.close()


def test_cli_revoke_cuts_off_the_data_of_an_open_session(prod_broker: ProdBroker, tmp_path: Path) -> None:
    env = make_secure_env(prod_broker, tmp_path, "honest:1", 1)
    device_id = env.devices[0].device_id
    cert = pki.IssuedCert(device_id, Path(env.tls.device_certs[device_id][0]),
                          Path(env.tls.device_certs[device_id][1]), None)  # type: ignore[arg-type]
    device = TlsClient(prod_broker, cert)
    data = wire.device_topic(device_id, wire.DATA)
    config = _write_config(env.cli_settings, tmp_path / "cli.toml")
    try:
        assert device.publish(data, b"before").value in SUCCESS
        result = CliRunner().invoke(cli, ["--config", str(config), "device", "revoke", device_id,
                                          "--reason", "key leaked"])
        assert result.exit_code == 0, result.output
        assert wait_for(lambda: device.publish(data, b"after").value == NOT_AUTHORIZED, 10)
        assert device.mqttc.is_connected(), "the open session was cut off from data, not disconnected"
    finally:
        device.close()
    assert env.status(device_id) == transitions.REVOKED
