"""Quarantine and revocation enforced through Mosquitto's dynamic-security plugin ($CONTROL/dynamic-security/v1),
on a real broker (broker_config/prod-dynsec.conf): a role change disconnects the device (0x98), the simulator
reconnects, reads its retained command and publishes only what its new role allows."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_sim.records import Profile
from hub import wire
from hub.appraisal import transitions
from hub.appraisal.operations import set_quarantine
from hub.broker.dynsec import ROLE_QUARANTINED, ROLE_REVOKED, ROLE_TRUSTED
from hub.broker.enforcement import enforcer_from_settings
from hub.cli.main import cli
from hub.config import Settings
from hub.crypto import pki
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import open_store
from hub.server.localhub import LocalHub
from tests.dynsec_env import dynsec_broker, make_dynsec_env
from tests.enforcement_env import NOT_AUTHORIZED, SecureEnv, wait_for
from tests.test_broker_prod import TlsClient

pytestmark = pytest.mark.broker

SUCCESS = (0x00, 0x10)
ADMINISTRATIVE_ACTION = 0x98


def _config(settings: Settings, path: Path) -> Path:
    keys = ("state_dir", "broker_host", "broker_tls_ca", "broker_tls_cert", "broker_tls_key", "broker_enforcement")
    lines = ["[hub]"] + [f"{k} = {json.dumps(str(getattr(settings, k)))}" for k in keys]
    lines += [f"broker_port = {settings.broker_port}", f"operator_keys = {json.dumps(list(settings.operator_keys))}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _roles(env: SecureEnv) -> dict[str, set[str]]:
    return enforcer_from_settings(env.cli_settings).status_roles()  # type: ignore[attr-defined, no-any-return]


def _rounds(fleet: object, predicate: object, timeout: float = 30) -> bool:
    def step() -> bool:
        fleet.publish_round()  # type: ignore[attr-defined]
        fleet.flush(5)  # type: ignore[attr-defined]
        return bool(predicate())  # type: ignore[operator]
    return wait_for(step, timeout, poll=0.2)


def test_hub_verdict_moves_a_device_that_ignores_commands_to_the_quarantine_role(tmp_path: Path) -> None:
    with dynsec_broker(tmp_path) as broker:
        env = make_dynsec_env(broker, tmp_path, "honest:1,ignores-commands:1", 2)
        bad = next(d for d in env.devices if d.profile is Profile.IGNORES_COMMANDS)
        good = next(d for d in env.devices if d.profile is Profile.HONEST)
        with LocalHub(env.settings) as hub, env.fleet(hub, data=True) as fleet:
            assert fleet.wait_for_epoch(10) is not None
            assert _rounds(fleet, lambda: env.status(bad.device_id) == transitions.QUARANTINED)
            assert _rounds(fleet, lambda: NOT_AUTHORIZED in fleet.data_reason_codes(bad.device_id))
            # measured on 2.0.11: creating the plugin's client with its role applies to the open session
            assert fleet.disconnects(bad.device_id) == []
            cut_at = fleet.data_reason_codes(bad.device_id).index(NOT_AUTHORIZED)
            verdicts_at_cut = env.verdict_count(bad.device_id)
            for _ in range(3):
                fleet.publish_round()
            assert fleet.flush(5)
            codes = fleet.data_reason_codes(bad.device_id)
            assert all(c == NOT_AUTHORIZED for c in codes[cut_at:]), "once in the role, every data publish is denied"
            assert env.connections_of(bad.device_id) == 1, "the session that was cut off is the one it opened"
            assert not bad.quarantined, "the device ignored its signed quarantine command"
            # the path back to health stays open: evidence still reaches the hub on the new session
            assert wait_for(lambda: env.verdict_count(bad.device_id) >= verdicts_at_cut + 3, 10)
            assert fleet.disconnects(good.device_id) == []
            assert all(c in SUCCESS for c in fleet.data_reason_codes(good.device_id))
        roles = _roles(env)
        assert roles == {bad.device_id: {ROLE_QUARANTINED}}


def test_an_obedient_device_reconnects_reads_its_retained_command_and_sends_only_what_its_role_allows(
    tmp_path: Path,
) -> None:
    with dynsec_broker(tmp_path) as broker:
        env = make_dynsec_env(broker, tmp_path, "honest:2", 2)
        device, other = env.devices
        config = _config(env.cli_settings, tmp_path / "cli.toml")
        runner = CliRunner()
        with LocalHub(env.settings) as hub, env.fleet(hub, data=True) as fleet:
            assert fleet.wait_for_epoch(10) is not None
            assert _rounds(fleet, lambda: len(fleet.data_reason_codes(device.device_id)) >= 2)
            def cli_run(*args: str) -> None:
                result = runner.invoke(cli, ["--config", str(config), "device", *args, "--reason", "test"])
                assert result.exit_code == 0, result.output

            def last_command() -> str:
                accepted = [o.command.type for o in device.command_log if o.accepted and o.command is not None]
                return accepted[-1] if accepted else ""

            # 1. first quarantine: the plugin learns the client with its role; the open session is restricted
            cli_run("quarantine", device.device_id)
            assert wait_for(lambda: device.quarantined, 10) and fleet.disconnects(device.device_id) == []
            # 2. release: a role change, so the broker ends the session (0x98); the device reconnects and
            #    reads the retained release that was published while it was away
            cli_run("release", device.device_id)
            assert wait_for(lambda: [rc for _, rc in fleet.disconnects(device.device_id)] == [ADMINISTRATIVE_ACTION])
            assert wait_for(lambda: not device.quarantined and fleet.admitted(device.device_id), 10)
            assert last_command() == wire.COMMAND_RELEASE
            assert _rounds(fleet, lambda: len(fleet.data_reason_codes(device.device_id)) >= 4)
            # 3. quarantine again: disconnected, reconnects, reads the retained quarantine, sends no telemetry.
            #    When the connection counts as admitted again, the retained command has already been applied.
            admitted_quarantined: list[bool] = []

            class Recording(threading.Event):
                def set(self) -> None:
                    admitted_quarantined.append(device.quarantined)
                    super().set()

            connection = fleet._connection_of[device.device_id]
            connection.admitted = Recording()
            connection.admitted.set()
            cli_run("quarantine", device.device_id)
            assert wait_for(lambda: len(fleet.disconnects(device.device_id)) == 2)
            assert wait_for(lambda: device.quarantined and fleet.admitted(device.device_id), 10)
            assert last_command() == wire.COMMAND_QUARANTINE
            assert admitted_quarantined == [False, True], "read the retained quarantine before readmission"
            assert all(rc == ADMINISTRATIVE_ACTION for _, rc in fleet.disconnects(device.device_id))
            data_before = len(fleet.data_reason_codes(device.device_id))
            evidence_before = env.verdict_count(device.device_id)
            for _ in range(3):
                fleet.publish_round()
            assert fleet.flush(5)
            codes = fleet.data_reason_codes(device.device_id)
            assert len(codes) == data_before, "a quarantined device sends no telemetry"
            assert all(c in SUCCESS for c in codes), "it never sent anything its role denies"
            assert wait_for(lambda: env.verdict_count(device.device_id) >= evidence_before + 3, 10)
            assert _roles(env) == {device.device_id: {ROLE_QUARANTINED}}
            assert fleet.disconnects(other.device_id) == [] and env.status(other.device_id) == transitions.TRUSTED
        assert env.connections_of(device.device_id) == 3


def test_revoked_role_denies_every_publish_but_leaves_the_commands_readable(tmp_path: Path) -> None:
    with dynsec_broker(tmp_path) as broker:
        env = make_dynsec_env(broker, tmp_path, "honest:1", 1)
        device_id = env.devices[0].device_id
        cert = pki.IssuedCert(device_id, Path(env.tls.device_certs[device_id][0]),
                              Path(env.tls.device_certs[device_id][1]), None)  # type: ignore[arg-type]
        config = _config(env.cli_settings, tmp_path / "cli.toml")
        result = CliRunner().invoke(cli, ["--config", str(config), "device", "revoke", device_id, "--reason", "leak"])
        assert result.exit_code == 0, result.output
        device = TlsClient(broker, cert)  # type: ignore[arg-type]
        try:
            device.subscribe(wire.device_topic(device_id, wire.COMMAND))
            for leaf in (wire.EVIDENCE, wire.DATA):
                assert device.publish(wire.device_topic(device_id, leaf), b"x").value == NOT_AUTHORIZED
            hub = TlsClient(broker, pki.IssuedCert("hub-obs", env.obs_cert.cert_path, env.obs_cert.key_path,
                                                   None))  # type: ignore[arg-type]
            try:
                assert hub.publish(wire.device_topic(device_id, wire.COMMAND), b"still readable").value in SUCCESS
            finally:
                hub.close()
            assert wait_for(lambda: bool(device.received()), 5)
        finally:
            device.close()
        assert _roles(env) == {device_id: {ROLE_REVOKED}}


def test_worker_start_syncs_the_roles_with_the_database(tmp_path: Path) -> None:
    """Committed but never applied (a crash), and a stale role the database no longer backs: a worker's
    first turn puts both right."""
    with dynsec_broker(tmp_path) as broker:
        env = make_dynsec_env(broker, tmp_path, "honest:2", 2)
        held, stale = (d.device_id for d in env.devices)
        enforcer_from_settings(env.cli_settings).quarantine(stale)  # the broker says quarantined...
        store = open_store(env.settings)
        try:  # ...the database says the other one is
            set_quarantine(store, load_hub_keys(env.settings), held, True, "committed before a crash", 3600)
        finally:
            store.close()
        assert _roles(env) == {stale: {ROLE_QUARANTINED}}
        with LocalHub(env.settings):
            assert wait_for(lambda: _roles(env) == {held: {ROLE_QUARANTINED}, stale: {ROLE_TRUSTED}}, 10)


def test_an_identity_without_the_admin_role_gets_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    from hub.broker.dynsec import ConnectionExecutor, DynsecEnforcer
    from hub.broker.enforcement import EnforcementError
    from hub.broker.transport import BrokerAddress

    with dynsec_broker(tmp_path) as broker:
        env = make_dynsec_env(broker, tmp_path, "honest:1", 1)
        stranger = pki.issue_hub_cert(broker.ca, broker.pki_dir, "stranger")  # valid certificate, no role
        address = BrokerAddress(broker.process.host, broker.process.port, stranger.common_name, session_expiry_s=0,
                                tls_ca=str(broker.ca.cert_path), tls_cert=str(stranger.cert_path),
                                tls_key=str(stranger.key_path))
        with pytest.raises(EnforcementError, match=r"admin role|refused"):
            DynsecEnforcer(ConnectionExecutor(address, timeout=3)).quarantine(env.devices[0].device_id)
        assert _roles(env) == {}
