"""Secrets and files of the hub, and the device ids it accepts.

* ``init`` makes the state directory and the database owner-only whatever the caller's umask;
* a key or secret file that group or others can read is refused, saying how to fix it (as OpenSSH does);
* a CSV's ``public_key_file`` must be inside the CSV's folder;
* public keys are stored in canonical form; one key enrolled for several devices warns;
* device ids are ASCII letters, digits, '.', '_', '-' (docs/PROTOCOL.md); look-alikes and ids that differ
  from another only by case are refused.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from helpers import SEED, HubEnv, env_fixture, run_cli

from device_sim import firmware
from device_sim.device import SimDevice
from device_sim.records import Profile
from hub.appraisal.operations import Enrolment, OperationError, enrol, read_enrolment_csv
from hub.cli.main import cli
from hub.crypto.keys import load_public_pem, public_pem
from hub.server.localhub import DEMO_OPERATOR_KEY

env = env_fixture()


def sim(device_id: str) -> SimDevice:
    return SimDevice(device_id, firmware.ENV_SENSOR, Profile.HONEST, seed=SEED)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- owner-only files -------------------------------------------------------------------------


def test_init_makes_the_state_dir_and_database_owner_only_under_a_lax_umask(tmp_path: Path) -> None:
    state = tmp_path / "var" / "hub"
    previous = os.umask(0o002)
    try:
        result = CliRunner().invoke(cli, ["--state-dir", str(state), "init"])
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert mode(state) == 0o700
    for name in ("hub.db", "hub-signing.key.pem", "nonce-secret.bin", "audit-key.bin", "generation.json"):
        assert mode(state / name) == 0o600, name


@pytest.mark.parametrize("name", ["hub-signing.key.pem", "nonce-secret.bin", "audit-key.bin"])
@pytest.mark.parametrize("loose", [0o640, 0o604, 0o660])
def test_a_secret_readable_by_others_is_refused_with_the_fix(tmp_path: Path, name: str, loose: int) -> None:
    state = tmp_path / "hub"
    assert CliRunner().invoke(cli, ["--state-dir", str(state), "init"]).exit_code == 0
    os.chmod(state / name, loose)
    for command in (["serve"], ["hub-key"], ["device", "list"] if name == "audit-key.bin" else ["hub-key"]):
        result = CliRunner().invoke(cli, ["--state-dir", str(state), "--broker", "127.0.0.1:1", *command],
                                    env={"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY)})
        assert result.exit_code == 3, (command, result.output)
        assert f"permissions {loose:04o}" in result.output and f"chmod 600 '{state / name}'" in result.output
    os.chmod(state / name, 0o600)
    assert CliRunner().invoke(cli, ["--state-dir", str(state), "hub-key"]).exit_code == 0


# --- CSV key files, canonical keys, shared keys ---------------------------------------------------


def test_csv_public_key_files_are_confined_to_the_csvs_folder(tmp_path: Path) -> None:
    folder = tmp_path / "batch"
    (folder / "keys").mkdir(parents=True)
    device = sim("env-sensor-0001")
    (folder / "keys" / "ok.pem").write_bytes(device.public_key_pem)
    (tmp_path / "outside.pem").write_bytes(device.public_key_pem)
    (folder / "link.pem").symlink_to(tmp_path / "outside.pem")
    header = "device_id,device_class,public_key_file\n"
    entries = read_enrolment_csv(header + "env-sensor-0001,env-sensor,keys/ok.pem\n", folder)
    assert entries[0].public_key_pem == device.public_key_pem.decode()
    for name in ("../outside.pem", str(tmp_path / "outside.pem"), "link.pem", "keys/../../outside.pem"):
        with pytest.raises(OperationError, match="outside the CSV's folder"):
            read_enrolment_csv(header + f"env-sensor-0001,env-sensor,{name}\n", folder)


def test_public_keys_are_stored_in_canonical_form(env: HubEnv) -> None:
    device = sim("env-sensor-0001")
    canonical = public_pem(load_public_pem(device.public_key_pem))
    messy = "\r\n".join(canonical.strip().splitlines()) + "\r\n\r\n"  # CRLF, a blank line: the same key
    assert messy != canonical
    enrol(env.store, [Enrolment(device.device_id, device.device_class, messy)])
    assert env.device(device.device_id).public_key_pem == canonical


def test_one_key_for_many_devices_warns(env: HubEnv, caplog: pytest.LogCaptureFixture) -> None:
    first = sim("env-sensor-0001")
    key = first.public_key_pem.decode()
    enrol(env.store, [Enrolment("env-sensor-0001", "env-sensor", key)])
    assert not caplog.records
    warnings: list[str] = []
    enrol(env.store, [Enrolment("env-sensor-0002", "env-sensor", key),
                      Enrolment("env-sensor-0003", "env-sensor", sim("env-sensor-0003").public_key_pem.decode())],
          warn=warnings.append)
    assert len(warnings) == 1 and "2 devices" in warnings[0] and "env-sensor-0001, env-sensor-0002" in warnings[0]
    with caplog.at_level(logging.WARNING):
        enrol(env.store, [Enrolment("env-sensor-0004", "env-sensor", key)])
    assert any("3 devices" in r.getMessage() for r in caplog.records)


def test_the_cli_prints_the_shared_key_warning(env: HubEnv, tmp_path: Path) -> None:
    device = sim("env-sensor-0001")
    key = tmp_path / "k.pem"
    key.write_bytes(device.public_key_pem)
    for device_id in ("env-sensor-0001", "env-sensor-0002"):
        result: Result = run_cli(env, "device", "enroll", "--id", device_id, "--class", "env-sensor",
                                 "--key", str(key))
        assert result.exit_code == 0, result.output
    assert "warning: one public key is enrolled for 2 devices" in result.output


# --- device ids ---------------------------------------------------------------------------------------


LOOKALIKES = [
    "env-s\u0435nsor-0001",  # Cyrillic small ie, prints as a Latin e
    "\uff45nv-sensor-0001",  # fullwidth Latin small e
    "caf\u00e9-1",  # é precomposed (NFC)
    "cafe\u0301-1",  # e + combining acute (NFD): prints the same as the one above
    "hub\u2010w1",  # Unicode hyphen: would pass a 'hub-' prefix check
    "env sensor",
    "env-sensor-0001\u200b",
]


@pytest.mark.parametrize("device_id", LOOKALIKES)
def test_ids_outside_the_alphabet_are_refused(env: HubEnv, device_id: str) -> None:
    with pytest.raises(OperationError, match=r"ASCII letters, digits|whitespace"):
        enrol(env.store, [Enrolment(device_id, "env-sensor", sim("env-sensor-0001").public_key_pem.decode())])


def test_ids_that_differ_only_by_case_are_refused(env: HubEnv) -> None:
    key = sim("env-sensor-0001").public_key_pem.decode()
    enrol(env.store, [Enrolment("env-sensor-0001", "env-sensor", key)])
    with pytest.raises(OperationError, match="only by case"):
        enrol(env.store, [Enrolment("ENV-Sensor-0001", "env-sensor", sim("x-1").public_key_pem.decode())])
    with pytest.raises(OperationError, match="only by case"):
        enrol(env.store, [Enrolment("Meter-1", "smart-meter", key), Enrolment("meter-1", "smart-meter", key)])
    result = run_cli(env, "device", "list", "--ids")
    assert result.stdout.split() == ["env-sensor-0001"]


def test_the_alphabet_is_what_protocol_md_defines() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text()
    assert "ASCII letters, digits, `.`, `_` and `-`" in text and "`[A-Za-z0-9._-]`" in text
