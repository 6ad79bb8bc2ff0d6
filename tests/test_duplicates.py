"""One rule for every copy of evidence already judged (docs/PROTOCOL.md#duplicates), for every scheme:
the copy gets its stored result again (the same claims, byte for byte) and the device's latest state command;
an old result never replaces the standing one; data results are never retained."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from helpers import HubEnv, env_fixture, incoming, only, publishes_on

from device_sim import keys as sim_keys
from device_sim import psa as sim_psa
from device_sim.rotation import rotation_message
from device_sim.telemetry import TelemetryChain
from hub import wire
from hub.appraisal.operations import Enrolment, enrol
from hub.crypto.keys import generate_p256

A = "smart-meter-0001"
PSA = "psa-sensor-0001"


env = env_fixture(A)


def results(outcome: Any) -> list[tuple[bytes, bool]]:
    """(the signed claims as encoded, retained) of each result: a repeat is re-signed (ECDSA is randomised),
    so its claims are compared byte for byte, not its signature."""
    return [(cbor2.loads(p.payload).value[2], p.retain) for p in publishes_on(outcome, wire.RESULT)]


def commands(outcome: Any) -> list[bytes]:
    return [p.payload for p in publishes_on(outcome, wire.COMMAND)]


def ref(result: bytes) -> str:
    value = cbor2.loads(result)[wire.RES_EVIDENCE_REF]
    assert isinstance(value, str)
    return value


def test_firmware_copy_gets_the_same_result_bytes_retained_while_it_stands(env: HubEnv) -> None:
    pipeline = env.pipeline()
    raw = env.evidence(A)
    [(first, retained)] = results(pipeline.process([incoming(A, raw)]))
    assert retained
    again = pipeline.process([incoming(A, raw)])
    assert only(again).status == "duplicate"
    assert results(again) == [(first, True)]  # the stored result's claims, byte for byte (iat and nonce too)


def test_an_old_firmware_copy_never_replaces_the_standing_result(env: HubEnv) -> None:
    pipeline = env.pipeline()
    old = env.evidence(A)
    pipeline.process([incoming(A, old)])
    pipeline.process([incoming(A, env.evidence(A))])
    again = pipeline.process([incoming(A, old)])
    [(result, retained)] = results(again)
    assert only(again).status == "duplicate" and not retained and ref(result).endswith(":1")


def test_a_copy_gets_the_latest_state_command(env: HubEnv) -> None:
    pipeline = env.pipeline()
    claims = env.claims(A)
    claims[wire.SWVERSION] = ["9.9.9"]  # not a release: quarantined
    bad = env.evidence(A, claims)
    first = pipeline.process([incoming(A, bad)])
    assert only(first).action == "quarantine"
    again = pipeline.process([incoming(A, bad)])
    assert commands(again) == commands(first) and results(again) == results(first)


def test_signed_evidence_refused_for_its_profile_gets_its_receipt_again(env: HubEnv) -> None:
    """refs signed:...: a device that follows the receipts section stops re-sending once it gets this."""
    claims = env.claims(A)
    claims[wire.EAT_PROFILE] = "tag:example.com,2026:other"
    bad = env.evidence(A, claims)
    pipeline = env.pipeline()
    first = pipeline.process([incoming(A, bad)])
    [(result, _)] = results(first)
    assert ref(result).startswith("signed:")
    again = pipeline.process([incoming(A, bad)])
    assert only(again).status == "duplicate"
    assert results(again) == results(first) and commands(again) == commands(first)


def test_a_copy_of_a_data_batch_is_answered_but_never_retained(env: HubEnv) -> None:
    pipeline = env.pipeline()
    pipeline.process([incoming(A, env.evidence(A))])  # the standing firmware result
    sim = env.devices[A]
    chain = TelemetryChain(A, sim.device_class, sim.ueid, env.device(A).bootcount)
    batch = chain.next_batch(sim._signing_key, env.epoch_nonce, 1_767_225_600, (env.device(A).bootcount, 1))
    first = pipeline.process([incoming(A, batch.raw, leaf=wire.DATA, content_type=wire.DATA_MEDIA_TYPE)])
    assert only(first).scheme == "data" and [r for _, r in results(first)] == [False]
    again = pipeline.process([incoming(A, batch.raw, leaf=wire.DATA, content_type=wire.DATA_MEDIA_TYPE)])
    assert only(again).status == "duplicate"
    assert results(again) == [(results(first)[0][0], False)]


def test_a_copy_of_a_key_rotation_no_longer_authenticates_and_changes_nothing(env: HubEnv) -> None:
    """The one exception to the rule: the rotation retires the key that signed it, so a copy is not the
    device's evidence any more (rejected, never retained), and the key stays the rotated one."""
    sim = env.devices[A]
    raw = rotation_message(A, sim._signing_key, generate_p256(), env.epoch_nonce)
    message = incoming(A, raw, content_type=wire.KEY_ROTATION_MEDIA_TYPE)
    pipeline = env.pipeline()
    first = pipeline.process([message])
    assert only(first).status == "affirming" and [r for _, r in results(first)] == [False]
    rotated = env.device(A)
    again = pipeline.process([message, message])
    assert [d.status for d in again.decisions] == ["rejected", "duplicate"]
    assert [r for _, r in results(again)] == [False, False]
    assert (env.device(A).public_key_pem, env.device(A).key_version) == (rotated.public_key_pem, rotated.key_version)


def test_a_copy_within_one_batch_gets_the_result_of_the_first(env: HubEnv) -> None:
    raw = env.evidence(A)
    outcome = env.pipeline().process([incoming(A, raw), incoming(A, raw)])
    assert [d.status for d in outcome.decisions] == ["affirming", "duplicate"]
    [(first, first_retained), (second, retained)] = results(outcome)
    assert second == first and first_retained and retained


def test_psa_copies_follow_the_same_rule(env: HubEnv) -> None:
    key = sim_keys.device_private_key("dups", PSA)
    instance = sim_psa.instance_id("dups", PSA)
    enrol(env.store, [Enrolment(PSA, "psa-sensor", sim_keys.public_key_pem(key).decode(), instance)], actor="test")

    def token(nonce: bytes) -> bytes:
        return sim_psa.sign_token(sim_psa.PsaToken(
            nonce=nonce, instance_id=instance, implementation_id=sim_psa.implementation_id(), client_id=1,
            lifecycle=wire.PSA_LIFECYCLE_SECURED, boot_seed=bytes(32),
            components=sim_psa.software_components("1.2.0")), key)

    pipeline = env.pipeline()
    old = token(env.epoch_nonce)
    ct = wire.PSA_MEDIA_TYPE
    [(old_result, retained)] = results(pipeline.process([incoming(PSA, old, content_type=ct)]))
    assert retained
    again = pipeline.process([incoming(PSA, old, content_type=ct)])
    assert results(again) == [(old_result, True)]  # still standing
    pipeline.process([incoming(PSA, token(env.challenge(PSA)), content_type=ct)])
    later = pipeline.process([incoming(PSA, old, content_type=ct)])
    assert only(later).status == "duplicate" and results(later) == [(old_result, False)]


@pytest.mark.tpm
def test_tpm_copies_follow_the_same_rule(env: HubEnv) -> None:
    from device_sim.tpm import TpmSimDevice

    with TpmSimDevice("edge-gateway-0301", seed="dups") as gateway:
        enrol(env.store, [Enrolment(gateway.device_id, "edge-gateway", gateway.public_key_pem.decode(), None)],
              actor="test")
        pipeline = env.pipeline()
        ct = wire.TPM_MEDIA_TYPE
        old = gateway.make_evidence(env.epoch_nonce)
        first = pipeline.process([incoming(gateway.device_id, old, content_type=ct)])
        [(old_result, retained)] = results(first)
        assert only(first).status != "rejected" and retained
        assert results(pipeline.process([incoming(gateway.device_id, old, content_type=ct)])) == [(old_result, True)]
        pipeline.process([incoming(gateway.device_id, gateway.make_evidence(env.epoch_nonce), content_type=ct)])
        later = pipeline.process([incoming(gateway.device_id, old, content_type=ct)])
        assert only(later).status == "duplicate" and results(later) == [(old_result, False)]


def test_a_signed_data_batch_that_breaks_its_profile_is_not_retained_either(env: HubEnv) -> None:
    """Data results never replace the standing platform result, also when the device signed a broken batch."""
    from device_sim import cose as sim_cose
    from device_sim.telemetry import with_records

    pipeline = env.pipeline()
    pipeline.process([incoming(A, env.evidence(A))])
    sim = env.devices[A]
    chain = TelemetryChain(A, sim.device_class, sim.ueid, env.device(A).bootcount)
    batch = chain.next_batch(sim._signing_key, env.epoch_nonce, 1_767_225_600, (env.device(A).bootcount, 1))
    tag = cbor2.loads(batch.raw)
    claims = cbor2.loads(tag.value[2])
    claims[wire.EAT_PROFILE] = "tag:example.com,2026:other"
    broken = with_records(sim_cose.sign1(cbor2.dumps(claims), sim._signing_key, A.encode()),
                          tag.value[1][wire.DATA_RECORDS])
    outcome = pipeline.process([incoming(A, broken, leaf=wire.DATA, content_type=wire.DATA_MEDIA_TYPE)])
    assert only(outcome).status == "contraindicated" and only(outcome).scheme == "data"
    assert [r for _, r in results(outcome)] == [False]


def test_a_device_takes_the_signed_ref_result_as_the_receipt_of_the_evidence_it_holds(env: HubEnv) -> None:
    """docs/PROTOCOL.md#receipts: the simulator computes the signed: ref of what it holds and stops re-sending."""
    from device_sim import keys as device_keys
    from device_sim.device import signed_ref
    from device_sim.records import EvidenceKind, EvidenceRecord
    from hub.crypto.keys import public_pem

    sim = env.devices[A]
    sim.hub_key = device_keys.load_hub_public_key(public_pem(env.keys.public_key).encode())
    claims = env.claims(A)
    claims[wire.EAT_PROFILE] = "tag:example.com,2026:other"
    bad = env.evidence(A, claims)
    sim._evidence_log.append(EvidenceRecord(claims[wire.EVIDENCE_SEQ], claims[wire.BOOTCOUNT], env.epoch_nonce, 0,
                                            0.0, EvidenceKind.EPOCH, bad))
    outcome = env.pipeline().process([incoming(A, bad)])
    [message] = publishes_on(outcome, wire.RESULT)
    assert ref(cbor2.loads(message.payload).value[2]) == signed_ref(bad)
    assert sim.resend_due(-1.0) == [bad]  # held, not yet acknowledged
    assert sim.handle_result(message.payload)
    assert sim.resend_due(-1.0) == []
