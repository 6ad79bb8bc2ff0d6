"""Operator inputs from other programs: enrolment CSV as spreadsheets write it; manifests with a repeated name."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import SEED, HubEnv, env_fixture, run_cli, sign_raw

from device_sim import firmware
from device_sim.device import SimDevice
from device_sim.records import Profile
from hub import wire
from hub.crypto.hubkeys import load_operator_keys
from hub.crypto.keys import fingerprint, load_private_file
from hub.reference.manifests import (
    Component,
    ManifestError,
    encode_payload,
    parse_source,
    sign_manifest,
    verify_manifest,
)
from hub.server.localhub import DEMO_OPERATOR_KEY, MANIFESTS_DIR

OPERATOR_KEY = MANIFESTS_DIR / "keys" / "demo-operator.key.pem"


env = env_fixture()


# --- enrolment CSV with a UTF-8 byte-order mark ----------------------------------------------


def test_enrolment_csv_with_a_byte_order_mark_is_read(env: HubEnv, tmp_path: Path) -> None:
    """Spreadsheet programs save "CSV UTF-8" with EF BB BF first; the first column is still device_id."""
    sims = [SimDevice(f"bom-{i}", firmware.ENV_SENSOR, Profile.HONEST, seed=SEED) for i in range(2)]
    lines = ["device_id,device_class,public_key_pem,ueid"]
    for sim in sims:
        pem = sim.public_key_pem.decode().replace("\n", "\\n")
        lines.append(f'{sim.device_id},{sim.device_class},"{pem}",{sim.ueid.hex()}')
    text = "\r\n".join(lines).replace("\\n", "\n") + "\r\n"
    batch = tmp_path / "batch.csv"
    batch.write_bytes(b"\xef\xbb\xbf" + text.encode())
    result = run_cli(env, "device", "enroll", "--file", str(batch), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"enrolled": 2}
    with env.store.reading() as conn:
        stored = {d.device_id: d for d in env.store.list_devices(conn)}
    assert set(stored) == {"bom-0", "bom-1"} and stored["bom-0"].ueid == sims[0].ueid


def test_enrolment_json_with_a_byte_order_mark_is_read(env: HubEnv, tmp_path: Path) -> None:
    sim = SimDevice("bom-json", firmware.ENV_SENSOR, Profile.HONEST, seed=SEED)
    doc = {"devices": [{"device_id": sim.device_id, "device_class": sim.device_class,
                        "public_key_pem": sim.public_key_pem.decode(), "ueid": sim.ueid.hex()}]}
    path = tmp_path / "fleet.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(doc).encode())
    assert run_cli(env, "device", "enroll", "--file", str(path)).exit_code == 0


def test_enrolment_file_that_is_not_utf8_is_refused_with_a_reason(env: HubEnv, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("device_id,device_class\nsensör,env-sensor\n".encode("latin-1"))
    result = run_cli(env, "device", "enroll", "--file", str(path))
    assert result.exit_code == 1 and "not UTF-8" in result.output


# --- a release that names a component twice -----------------------------------------------------

DUPLICATE_SOURCE = """
device_class = "env-sensor"
sequence = 9
min_svn = 0

[[release]]
version = "2.0.0"
svn = 4
status = "approved"

[[release.component]]
name = "app"
digest = "sha256:{a}"

[[release.component]]
name = "app"
digest = "sha256:{b}"
""".format(a="11" * 32, b="22" * 32)


def test_manifest_source_with_a_repeated_component_name_is_refused() -> None:
    with pytest.raises(ManifestError, match=r"release 2\.0\.0 lists component 'app' twice"):
        parse_source(DUPLICATE_SOURCE)


def test_signing_a_manifest_with_a_repeated_component_name_is_refused() -> None:
    good = parse_source((MANIFESTS_DIR / "env-sensor" / "manifest.toml").read_text())
    release = good.releases[0]
    twice = dataclasses.replace(release, components=(*release.components,
                                                     Component(release.components[0].name, bytes(32))))
    manifest = dataclasses.replace(good, releases=(twice, *good.releases[1:]))
    key = load_private_file(OPERATOR_KEY)
    with pytest.raises(ManifestError, match=f"release {release.version} lists component "
                                            f"'{release.components[0].name}' twice"):
        sign_manifest(manifest, key)


def test_importing_a_signed_manifest_with_a_repeated_component_name_is_refused(env: HubEnv, tmp_path: Path) -> None:
    """A manifest signed elsewhere (not by this hub's CLI) is checked at import too."""
    good = parse_source((MANIFESTS_DIR / "env-sensor" / "manifest.toml").read_text())
    payload = cbor2.loads(encode_payload(dataclasses.replace(good, sequence=50), issued_at=1))
    comps = payload[wire.MF_RELEASES][0][wire.REL_COMPONENTS]
    comps.append({**comps[0], wire.COMP_DIGEST: [wire.SHA256, bytes(32)]})
    key = load_private_file(OPERATOR_KEY)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    kid = fingerprint(key.public_key()).encode()
    raw = sign_raw(cbor2.dumps(payload), key, protected={wire.HDR_ALG: wire.ALG_ES256, wire.HDR_KID: kid})
    name = comps[0][wire.COMP_NAME]
    with pytest.raises(ManifestError, match=f"lists component '{name}' twice"):
        verify_manifest(raw, load_operator_keys((str(DEMO_OPERATOR_KEY),)))
    signed = tmp_path / "dup.cose"
    signed.write_bytes(raw)
    result = run_cli(env, "manifest", "verify", str(signed))
    assert result.exit_code == 1 and f"lists component '{name}' twice" in result.output


def test_cli_sign_refuses_a_source_with_a_repeated_component_name(env: HubEnv, tmp_path: Path) -> None:
    source = tmp_path / "dup.toml"
    source.write_text(DUPLICATE_SOURCE)
    result = run_cli(env, "manifest", "sign", str(source), "--key", str(OPERATOR_KEY))
    assert result.exit_code == 1
    assert "release 2.0.0 lists component 'app' twice" in result.output
    assert not source.with_suffix(".cose").exists()
