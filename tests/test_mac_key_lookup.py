"""A device's symmetric key file is read for its COSE_Mac0 evidence, not for every message of a device
without a public key: CA-issued devices (identified by an x5chain to a manufacturer CA) cost no file access."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from helpers import HubEnv, env_fixture, incoming, only
from test_psa_mac0 import DEVICE, claims, enrol_mac, mac0

from device_sim import keys as sim_keys
from device_sim import psa as sim_psa
from device_sim.device import SimDevice
from device_sim.firmware import SMART_METER
from hub import wire
from hub.appraisal.operations import Enrolment, enrol
from hub.appraisal.pipeline import Pipeline
from hub.crypto import pki
from hub.crypto.cose import decode_sign1, sign1
from hub.crypto.hubkeys import MAC_KEY_DIR
from hub.schemes import SchemeRegistry, default_schemes

CA_DEVICE = "smart-meter-0700"


env = env_fixture()


@pytest.fixture
def mac_key_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Each file system look-up of a MAC key file (a lookup stats the file first, found or not)."""
    seen: list[Path] = []
    original = Path.stat

    def counting(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.parent.name == MAC_KEY_DIR:
            seen.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", counting)
    return seen


def ca_pipeline(env: HubEnv, ca: pki.CertificateAuthority) -> Pipeline:
    return Pipeline(env.store, SchemeRegistry(default_schemes()), env.keys, env.references,
                    ca_certificates=(ca.certificate,))


def test_a_ca_issued_device_costs_no_mac_key_lookup_per_message(
        env: HubEnv, tmp_path: Path, mac_key_reads: list[Path]) -> None:
    ca = pki.create_ca(tmp_path / "ca", "Acme Devices CA")
    device = SimDevice(CA_DEVICE, SMART_METER, seed="lookup")
    enrol(env.store, [Enrolment(CA_DEVICE, SMART_METER, None, device.ueid)], actor="test")
    leaf = pki.issue_device_cert(ca, tmp_path, CA_DEVICE, public_key=device.enrolled_key.public_key())
    chain = leaf.certificate.public_bytes(Encoding.DER)
    pipeline = ca_pipeline(env, ca)

    def evidence() -> bytes:
        payload = decode_sign1(device.make_evidence(env.epoch_nonce)).payload
        return sign1(payload, device.enrolled_key, kid=CA_DEVICE.encode(), extra_protected={wire.HDR_X5CHAIN: chain})

    for _ in range(3):  # one message a batch, then three in one batch
        decision = only(pipeline.process([incoming(CA_DEVICE, evidence())]))
        assert decision.status == "affirming", decision.problems
    outcome = pipeline.process([incoming(CA_DEVICE, evidence()) for _ in range(3)])
    assert [d.status for d in outcome.decisions] == ["affirming"] * 3
    assert mac_key_reads == []


def test_mac0_evidence_still_reads_its_key_once_a_batch(env: HubEnv, tmp_path: Path, mac_key_reads: list[Path]) -> None:
    assert enrol_mac(env, tmp_path).exit_code == 0  # type: ignore[attr-defined]
    mac_key_reads.clear()
    outcome = env.pipeline().process([incoming(DEVICE, mac0(claims(env.epoch_nonce)),
                                               content_type=wire.PSA_MEDIA_TYPE)])
    assert only(outcome).status == "affirming", only(outcome).problems
    assert len(mac_key_reads) == 1


def test_a_sign1_token_from_a_device_with_a_symmetric_key_is_refused_naming_it(env: HubEnv, tmp_path: Path) -> None:
    """The key is not read for COSE_Sign1 evidence to verify it, only to say why it cannot be verified."""
    assert enrol_mac(env, tmp_path).exit_code == 0  # type: ignore[attr-defined]
    raw = sim_psa.sign_token(sim_psa.PsaToken(
        nonce=env.epoch_nonce, instance_id=sim_psa.instance_id("mac0", DEVICE),
        implementation_id=sim_psa.implementation_id(), client_id=1, lifecycle=wire.PSA_LIFECYCLE_SECURED,
        boot_seed=bytes(32), components=sim_psa.software_components("1.2.0")),
        sim_keys.device_private_key("mac0", DEVICE))
    outcome = env.pipeline().process([incoming(DEVICE, raw, content_type=wire.PSA_MEDIA_TYPE)])
    assert only(outcome).status == "rejected" and only(outcome).reason == "sign1-for-mac-key"


def test_a_device_without_any_key_is_still_refused_for_want_of_one(env: HubEnv) -> None:
    enrol(env.store, [Enrolment("smart-meter-0701", SMART_METER, None, None)], actor="test")
    device = SimDevice("smart-meter-0701", SMART_METER, seed="lookup")
    outcome = env.pipeline().process([incoming("smart-meter-0701", device.make_evidence(env.epoch_nonce))])
    assert only(outcome).status == "rejected" and only(outcome).reason == "no-key"
