"""PSA tokens as COSE_Mac0 (HMAC 256/256) under a symmetric key enrolled for the device (RFC 9783 section 5:
TF-M's symmetric initial attestation key). The MAC is computed here from RFC 9052 section 6.3, not with
the hub's code."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import cbor2
import pytest
from helpers import HubEnv, env_fixture, incoming, only, publishes_on, run_cli

from device_sim import keys as sim_keys
from device_sim import psa as sim_psa
from hub import wire
from hub.crypto.keys import load_public_pem
from hub.schemes.base import EvidenceError, TrustAnchor
from hub.schemes.psa import PsaScheme

DEVICE = "psa-sensor-0101"
KEY = bytes(range(32))
INSTANCE = sim_psa.instance_id("mac0", DEVICE)


def claims(nonce: bytes = b"E" + bytes(31)) -> dict[int, object]:
    return sim_psa.claims_map(sim_psa.PsaToken(
        nonce=nonce, instance_id=INSTANCE, implementation_id=sim_psa.implementation_id(), client_id=1,
        lifecycle=wire.PSA_LIFECYCLE_SECURED, boot_seed=bytes(32), components=sim_psa.software_components("1.2.0")))


def mac0(payload: dict[int, object], key: bytes = KEY, protected: dict[int, object] | None = None,
         unprotected: dict[int, object] | None = None, tag_size: int = 32) -> bytes:
    """COSE_Mac0 = 17([protected, unprotected, payload, tag]); tag = HMAC-SHA256 over
    MAC_structure ["MAC0", protected, external_aad (empty), payload]."""
    protected_bytes = cbor2.dumps({1: 5} if protected is None else protected)
    body = cbor2.dumps(payload)
    tag = hmac.new(key, cbor2.dumps(["MAC0", protected_bytes, b"", body]), hashlib.sha256).digest()[:tag_size]
    return cbor2.dumps(cbor2.CBORTag(17, [protected_bytes, unprotected or {}, body, tag]))


MAC_ANCHOR = TrustAnchor(DEVICE, "psa-sensor", None, INSTANCE, mac_key=KEY)


def reason(raw: bytes, anchor: TrustAnchor = MAC_ANCHOR) -> str:
    with pytest.raises(EvidenceError) as err:
        PsaScheme().verify(raw, anchor)
    return err.value.reason


def test_a_mac0_token_verifies_with_the_enrolled_symmetric_key() -> None:
    verified = PsaScheme().verify(mac0(claims()), MAC_ANCHOR)
    assert verified.scheme == "psa" and verified.nonce == b"E" + bytes(31)
    cwt = cbor2.dumps(cbor2.CBORTag(wire.CWT_TAG, cbor2.loads(mac0(claims()))))
    assert PsaScheme().verify(cwt, MAC_ANCHOR).dedup_key == verified.dedup_key


@pytest.mark.parametrize(("raw", "why"), [
    (mac0(claims(), key=bytes(32)), "bad-mac"),
    (mac0(claims(), tag_size=8, protected={1: 4}), "alg-unsupported"),  # HMAC 256/64: truncated tags refused
    (mac0(claims(), protected={}, unprotected={1: 5}), "alg-unprotected"),
    (mac0(claims(), protected={1: 5, 2: [1]}), "crit-unknown"),
    (mac0(claims())[:-1] + b"\x00", "bad-mac"),
], ids=["wrong-key", "hmac-256-64", "alg-unprotected", "crit", "tag-changed"])
def test_a_mac0_token_that_does_not_verify_is_refused(raw: bytes, why: str) -> None:
    assert reason(raw) == why


def test_a_mac0_token_for_a_device_enrolled_with_an_asymmetric_key_names_it() -> None:
    key = sim_keys.device_private_key("mac0", DEVICE)
    anchor = TrustAnchor(DEVICE, "psa-sensor", load_public_pem(sim_keys.public_key_pem(key).decode()), INSTANCE)
    with pytest.raises(EvidenceError) as err:
        PsaScheme().verify(mac0(claims()), anchor)
    assert err.value.reason == "mac0-for-asymmetric-key" and "asymmetric key" in err.value.detail


def test_a_sign1_token_for_a_device_enrolled_with_a_symmetric_key_names_it() -> None:
    key = sim_keys.device_private_key("mac0", DEVICE)
    raw = sim_psa.sign_token(sim_psa.PsaToken(
        nonce=b"E" + bytes(31), instance_id=INSTANCE, implementation_id=sim_psa.implementation_id(), client_id=1,
        lifecycle=wire.PSA_LIFECYCLE_SECURED, boot_seed=bytes(32), components=sim_psa.software_components("1.2.0")),
        key)
    assert reason(raw) == "sign1-for-mac-key"


# --- enrolment and the pipeline ------------------------------------------------------------------


env = env_fixture()


def enrol_mac(env: HubEnv, tmp_path: Path, device_id: str = DEVICE, key: bytes = KEY) -> object:
    key_file = tmp_path / f"{device_id}.hmac"
    key_file.write_text(key.hex() + "\n")
    return run_cli(env, "device", "enroll", "--id", device_id, "--class", "psa-sensor", "--mac-key", str(key_file),
                   "--ueid", INSTANCE.hex(), "--json")


def test_enrolled_mac_key_is_kept_owner_only_and_not_in_the_database(env: HubEnv, tmp_path: Path) -> None:
    result = enrol_mac(env, tmp_path)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    keydir = env.settings.state_dir / "device-mac-keys"
    [stored] = list(keydir.iterdir())
    assert stored.read_bytes() == KEY
    assert stat.S_IMODE(os.stat(keydir).st_mode) == 0o700 and stat.S_IMODE(os.stat(stored).st_mode) == 0o600
    with env.store.reading() as conn:
        row = env.store.devices(conn, [DEVICE])[DEVICE]
    assert row.public_key_pem is None and KEY.hex() not in json.dumps(row.values(), default=str)
    again = enrol_mac(env, tmp_path, key=bytes(32))
    assert again.exit_code == 1 and "already enrolled" in again.output  # type: ignore[attr-defined]
    assert stored.read_bytes() == KEY


def test_a_mac_key_of_the_wrong_size_is_refused(env: HubEnv, tmp_path: Path) -> None:
    key_file = tmp_path / "short.hmac"
    key_file.write_bytes(bytes(16))
    result = run_cli(env, "device", "enroll", "--id", DEVICE, "--class", "psa-sensor", "--mac-key", str(key_file))
    assert result.exit_code == 1 and "32 bytes" in result.output


def test_a_mac0_token_is_appraised_through_the_pipeline(env: HubEnv, tmp_path: Path) -> None:
    assert enrol_mac(env, tmp_path).exit_code == 0  # type: ignore[attr-defined]
    outcome = env.pipeline().process([incoming(DEVICE, mac0(claims(env.epoch_nonce)),
                                               content_type=wire.PSA_MEDIA_TYPE)])
    decision = only(outcome)
    assert decision.status == "affirming", decision.problems
    assert [p.retain for p in publishes_on(outcome, wire.RESULT)] == [True]
    forged = env.pipeline().process([incoming(DEVICE, mac0(claims(env.challenge(DEVICE)), key=bytes(32)),
                                              content_type=wire.PSA_MEDIA_TYPE)])
    assert only(forged).status == "rejected" and only(forged).reason == "bad-mac"


def test_a_mac0_token_that_breaks_its_profile_is_named_by_what_its_mac_covers(env: HubEnv, tmp_path: Path) -> None:
    """Its receipt is "signed:" + SHA-256(MAC_structure)[:16] in hex, like a COSE_Sign1's over Sig_structure."""
    assert enrol_mac(env, tmp_path).exit_code == 0  # type: ignore[attr-defined]
    broken = claims(env.epoch_nonce)
    broken[wire.EAT_PROFILE] = "tag:example.com,2026:other"
    raw = mac0(broken)
    outcome = env.pipeline().process([incoming(DEVICE, raw, content_type=wire.PSA_MEDIA_TYPE)])
    protected, _, payload, _ = cbor2.loads(raw).value
    expected = "signed:" + hashlib.sha256(cbor2.dumps(["MAC0", protected, b"", payload])).hexdigest()[:32]
    assert only(outcome).evidence_ref == expected and only(outcome).reason == ""
    again = env.pipeline().process([incoming(DEVICE, raw, content_type=wire.PSA_MEDIA_TYPE)])
    assert only(again).status == "duplicate" and len(publishes_on(again, wire.RESULT)) == 1


def test_a_mac_key_file_others_can_read_is_not_used(env: HubEnv, tmp_path: Path) -> None:
    """As OpenSSH refuses such private keys: the token is then refused for want of a key, never verified."""
    assert enrol_mac(env, tmp_path).exit_code == 0  # type: ignore[attr-defined]
    [stored] = list((env.settings.state_dir / "device-mac-keys").iterdir())
    stored.chmod(0o644)
    outcome = env.pipeline().process([incoming(DEVICE, mac0(claims(env.epoch_nonce)),
                                               content_type=wire.PSA_MEDIA_TYPE)])
    assert only(outcome).status == "rejected" and only(outcome).reason == "no-key"
