"""``attest-hub manifest diff / deprecate / revoke`` (publishing through the broker is in test_cli_publish)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import Result
from helpers import HubEnv, env_fixture, run_cli

from device_sim import firmware
from hub.crypto.keys import generate_p256, write_private_key
from hub.reference.manifests import verify_manifest
from hub.server.localhub import MANIFESTS_DIR

OPERATOR_KEY = MANIFESTS_DIR / "keys" / "demo-operator.key.pem"
ENV_SIGNED = MANIFESTS_DIR / "env-sensor" / "manifest.cose"


env = env_fixture()


def run(env: HubEnv, *args: str) -> Result:
    result: Result = run_cli(env, *args)
    return result


def test_diff_lists_release_status_svn_and_digest_changes(env: HubEnv, tmp_path: Path) -> None:
    images = tmp_path / "images"
    firmware.write_images(images)
    new = tmp_path / "new.toml"
    result = run(env, "manifest", "create", "--class", "env-sensor", "--sequence", "2", "--min-svn", "3",
                 "--release", f"1.2.0:4:{images / 'env-sensor' / '1.2.0'}",
                 "--release", f"1.3.0:5:{images / 'env-sensor' / '1.1.0'}", "--out", str(new))
    assert result.exit_code == 0, result.output
    data = json.loads(run(env, "manifest", "diff", str(ENV_SIGNED), str(new), "--json").stdout)
    changes = {(c["release"], c["what"]): (c["old"], c["new"]) for c in data["changes"]}
    assert data["old"] == "env-sensor#1" and data["new"] == "env-sensor#2"
    assert changes[(None, "sequence")] == (1, 2) and changes[(None, "min_svn")] == (2, 3)
    assert changes[("1.0.0", "removed")][1] is None and changes[("1.1.0", "removed")][1] is None
    assert changes[("1.3.0", "added")] == (None, "svn 5, approved")
    assert changes[("1.2.0", "svn")] == (3, 4)
    assert not any(r == "1.2.0" and w.startswith("component") for r, w in changes), "same images, same digests"
    same = run(env, "manifest", "diff", str(ENV_SIGNED), str(MANIFESTS_DIR / "env-sensor" / "manifest.toml"),
               "--exit-code")
    assert same.exit_code == 0 and "0 change(s)" in same.stdout
    assert run(env, "manifest", "diff", str(ENV_SIGNED), str(new), "--exit-code").exit_code == 1


def test_diff_shows_changed_component_digests(env: HubEnv, tmp_path: Path) -> None:
    source = (MANIFESTS_DIR / "env-sensor" / "manifest.toml").read_text()
    first_digest = source.split('digest = "sha256:')[1][:64]
    changed = tmp_path / "changed.toml"
    changed.write_text(source.replace(first_digest, "ab" * 32))
    data = json.loads(run(env, "manifest", "diff", str(ENV_SIGNED), str(changed), "--json").stdout)
    assert data["changes"] == [{"release": "1.0.0", "what": "component app", "old": first_digest,
                                "new": "ab" * 32}]


def test_deprecate_writes_the_next_signed_manifest(env: HubEnv, tmp_path: Path) -> None:
    out = tmp_path / "env-2.cose"
    result = run(env, "manifest", "deprecate", "1.1.0", "--class", "env-sensor", "--key", str(OPERATOR_KEY),
                 "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["published"] is False
    manifest = verify_manifest(out.read_bytes(), env.keys.operator_keys)
    assert manifest.sequence == 2
    assert {r.version: r.status for r in manifest.releases} == {
        "1.0.0": "approved", "1.1.0": "deprecated", "1.2.0": "approved"}
    with env.store.reading() as conn:
        assert len(env.store.manifest_history(conn, "env-sensor")) == 1, "not published without --publish"


def test_revoke_from_a_file_and_revocation_is_final(env: HubEnv, tmp_path: Path) -> None:
    out = tmp_path / "env-2.cose"
    assert run(env, "manifest", "revoke", "1.0.0", "--class", "env-sensor", "--from", str(ENV_SIGNED),
               "--key", str(OPERATOR_KEY), "--out", str(out)).exit_code == 0
    manifest = verify_manifest(out.read_bytes(), env.keys.operator_keys)
    assert manifest.release("1.0.0") is not None and manifest.release("1.0.0").status == "revoked"
    again = run(env, "manifest", "deprecate", "1.0.0", "--class", "env-sensor", "--from", str(out),
                "--key", str(OPERATOR_KEY), "--out", str(tmp_path / "env-3.cose"))
    assert again.exit_code == 1 and "final" in again.output
    assert run(env, "manifest", "revoke", "9.9.9", "--class", "env-sensor", "--key", str(OPERATOR_KEY),
               "--out", str(tmp_path / "x.cose")).exit_code == 1
    assert run(env, "manifest", "revoke", "1.0.0", "--class", "smart-meter", "--from", str(ENV_SIGNED),
               "--key", str(OPERATOR_KEY), "--out", str(tmp_path / "x.cose")).exit_code == 1


def test_a_manifest_signed_by_an_unknown_key_is_not_published(env: HubEnv, tmp_path: Path) -> None:
    rogue = tmp_path / "rogue.key.pem"
    write_private_key(rogue, generate_p256())
    out = tmp_path / "env-2.cose"
    assert run(env, "manifest", "deprecate", "1.1.0", "--class", "env-sensor", "--key", str(rogue),
               "--out", str(out)).exit_code == 0
    assert run(env, "manifest", "verify", str(out)).exit_code == 1
    published = run(env, "manifest", "publish", str(out))
    assert published.exit_code == 1 and "untrusted key" in published.output
