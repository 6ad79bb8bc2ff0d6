"""The data-integrity scheme, pure: ``verify`` on crafted batches and ``appraise`` on chain states.

Every check the scheme makes has a case here where a batch fails it; removing the check makes
that case fail. Batches come from the simulator's encoder (device_sim.telemetry), crafted
variants are built from them with cbor2 and the device key.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import cbor2
import pytest

from device_sim import cose as sim_cose
from device_sim.data_profiles import alter_record
from device_sim.device import SimDevice
from device_sim.telemetry import Batch, TelemetryChain, encode_records, with_records
from hub import wire
from hub.reference import trust
from hub.reference.policy import Policy
from hub.reference.trust import Tier
from hub.schemes.base import AppraisalInputs, DeviceState, EvidenceError, TrustAnchor
from hub.schemes.data import ChainState, DataBatch, DataScheme, appraise_batch

DEVICE = "env-sensor-0001"
NONCE = b"E" + bytes(31)
AFFIRMING = DeviceState(firmware_tier=int(Tier.AFFIRMING))
SCHEME = DataScheme()


class Rig:
    """One simulated device's chain and the hub's view of it (state kept from appraisal updates)."""

    def __init__(self, bootcount: int = 5) -> None:
        self.device = SimDevice(DEVICE, "env-sensor", seed="data-tests", bootcount=bootcount)
        self.chain = TelemetryChain(DEVICE, "env-sensor", self.device.ueid, bootcount)
        self.anchor = TrustAnchor(DEVICE, "env-sensor", self.device.enrolled_key.public_key(), self.device.ueid)
        self.state = AFFIRMING
        self.iat = 1_767_225_600

    def batch(self, attestation: tuple[int, int] | None = None) -> Batch:
        self.iat += 1
        ctx = attestation if attestation is not None else (self.chain.bootcount, 1)
        return self.chain.next_batch(self.device.enrolled_key, NONCE, self.iat, ctx)

    def verify(self, raw: bytes) -> DataBatch:
        body = SCHEME.verify(raw, self.anchor).body
        assert isinstance(body, DataBatch)
        return body

    def appraise(self, batch: Batch, policy: Policy | None = None) -> Any:
        appraisal = appraise_batch(DEVICE, self.verify(batch.raw),
                                   AppraisalInputs(None, policy or Policy("env-sensor"), self.state))
        if appraisal.state_updates:
            self.state = replace(self.state, **appraisal.state_updates)  # type: ignore[arg-type]
        return appraisal


def resign(raw: bytes, rig: Rig, change: Any) -> bytes:
    """Decode a batch, let ``change`` edit its claims map, sign again with the device key."""
    tag = cbor2.loads(raw)
    claims = cbor2.loads(tag.value[2])
    change(claims)
    signed = sim_cose.sign1(cbor2.dumps(claims), rig.device.enrolled_key, DEVICE.encode())
    return with_records(signed, tag.value[1][wire.DATA_RECORDS])


def tier(appraisal: Any) -> Tier:
    result: Tier = appraisal.trust_vector.tier()
    return result


def codes(appraisal: Any) -> list[str]:
    return [p.split(":")[0] for p in appraisal.problems]


# --- verify --------------------------------------------------------------------------


def test_an_honest_batch_verifies_with_its_records_and_chain_position() -> None:
    rig = Rig()
    batch = rig.batch()
    claims = SCHEME.verify(batch.raw, rig.anchor)
    body = claims.body
    assert isinstance(body, DataBatch)
    assert (body.bootcount, body.seq, body.prev, body.digest) == (5, 1, wire.DATA_GENESIS, batch.digest)
    assert [(r.time, r.metric, r.value) for r in body.records] == list(batch.records)
    assert claims.counter is None and claims.nonce == NONCE
    assert claims.dedup_key == f"data:5:1:{batch.digest.hex()}"


def test_an_altered_record_is_an_unauthenticated_rejection() -> None:
    rig = Rig()
    with pytest.raises(EvidenceError) as err:
        SCHEME.verify(alter_record(rig.batch().raw), rig.anchor)
    assert err.value.reason == "records-tampered" and not err.value.authenticated


def test_records_stripped_in_flight_are_an_unauthenticated_rejection() -> None:
    rig = Rig()
    tag = cbor2.loads(rig.batch().raw)
    stripped = cbor2.dumps(cbor2.CBORTag(18, [tag.value[0], {}, tag.value[2], tag.value[3]]))
    with pytest.raises(EvidenceError) as err:
        SCHEME.verify(stripped, rig.anchor)
    assert err.value.reason == "records-missing" and not err.value.authenticated


def test_a_changed_signed_claim_breaks_the_signature() -> None:
    rig = Rig()
    tag = cbor2.loads(rig.batch().raw)
    claims = cbor2.loads(tag.value[2])
    claims[wire.DATA_BATCH_SEQ] = 9
    forged = cbor2.dumps(cbor2.CBORTag(18, [tag.value[0], tag.value[1], cbor2.dumps(claims), tag.value[3]]))
    with pytest.raises(EvidenceError) as err:
        SCHEME.verify(forged, rig.anchor)
    assert err.value.reason == "bad-signature"


def test_malformed_records_under_a_matching_digest_are_the_devices_own_fault() -> None:
    rig = Rig()
    bad = cbor2.dumps([[1, "x"]])

    def swap(claims: dict[int, Any]) -> None:
        claims[wire.DATA_RECORDS_DIGEST] = [wire.SHA256, hashlib.sha256(bad).digest()]

    raw = resign(rig.batch().raw, rig, swap)
    tag = cbor2.loads(raw)
    raw = cbor2.dumps(cbor2.CBORTag(18, [tag.value[0], {wire.DATA_RECORDS: bad}, tag.value[2], tag.value[3]]))
    with pytest.raises(EvidenceError) as err:
        SCHEME.verify(raw, rig.anchor)
    assert err.value.reason == "bad-records" and err.value.authenticated


@pytest.mark.parametrize(("change", "reason"), [
    (lambda c: c.__setitem__(wire.EAT_PROFILE, wire.FIRMWARE_PROFILE), "wrong-profile"),
    (lambda c: c.__setitem__(wire.UEID, b"\x01" + bytes(16)), "ueid-mismatch"),
    (lambda c: c.__setitem__(wire.DATA_PREV, bytes(31)), "bad-claim"),
    (lambda c: c.__setitem__(wire.DATA_BATCH_SEQ, 0), "bad-claim"),
    (lambda c: c.pop(wire.DATA_ATTESTATION), "missing-claim"),
    (lambda c: c.__setitem__(wire.DATA_ATTESTATION, [1]), "bad-claim"),
    (lambda c: c.__setitem__(wire.DATA_PREV_BOOT, [4, 0, bytes(32)]), "bad-claim"),
    (lambda c: c.__setitem__(wire.DATA_RECORDS_DIGEST, [-44, bytes(32)]), "bad-claim"),
    (lambda c: c.pop(wire.NONCE), "missing-claim"),
])
def test_signed_claims_that_break_the_profile_are_refused(change: Any, reason: str) -> None:
    rig = Rig()
    with pytest.raises(EvidenceError) as err:
        SCHEME.verify(resign(rig.batch().raw, rig, change), rig.anchor)
    assert err.value.reason == reason and err.value.authenticated


def test_the_kid_must_name_the_topics_device() -> None:
    rig = Rig()
    other = TrustAnchor("env-sensor-0002", "env-sensor", rig.anchor.public_key, rig.device.ueid)
    with pytest.raises(EvidenceError) as err:
        SCHEME.verify(rig.batch().raw, other)
    assert err.value.reason == "kid-mismatch"


# --- appraise: the chain ---------------------------------------------------------------


def test_an_honest_chain_is_affirming_and_every_batch_is_republished_in_order() -> None:
    rig = Rig()
    for seq in (1, 2, 3):
        appraisal = rig.appraise(rig.batch())
        assert tier(appraisal) is Tier.AFFIRMING and appraisal.problems == ()
        assert appraisal.trust_vector.sourced_data == trust.SOURCED_TRUSTED
        message = cbor2.loads(appraisal.verified_data)
        assert (message["seq"], message["verdict"], message["device"]) == (seq, "affirming", DEVICE)
    assert (rig.state.chain_bootcount, rig.state.chain_seq) == (5, 3)
    assert rig.state.chain_head is not None and rig.state.chain_head[:32] == rig.chain.head


def test_a_gap_follows_the_policy() -> None:
    for policy, expected in ((Policy("env-sensor", data_gap="warning"), Tier.WARNING),
                             (Policy("env-sensor", data_gap="contraindicated"), Tier.CONTRAINDICATED)):
        rig = Rig()
        rig.appraise(rig.batch())
        rig.batch()  # lost
        appraisal = rig.appraise(rig.batch(), policy)
        assert tier(appraisal) is expected and codes(appraisal) == ["data-gap"]
        assert (appraisal.verified_data is not None) == (expected is Tier.WARNING)
        assert rig.state.chain_seq == 3  # the chain moves on past a gap


def test_a_chain_joined_midway_reports_the_missing_start_as_a_gap() -> None:
    rig = Rig()
    rig.batch()
    rig.batch()
    appraisal = rig.appraise(rig.batch())  # the first batch the hub sees is batch 3
    assert codes(appraisal) == ["data-gap"] and tier(appraisal) is Tier.WARNING
    assert "batches 1..2" in appraisal.problems[0] and appraisal.verified_data is not None


def test_a_late_batch_is_a_warning_and_never_republished() -> None:
    rig = Rig()
    rig.appraise(rig.batch())
    late = rig.batch()
    rig.appraise(rig.batch())
    appraisal = rig.appraise(late)
    assert tier(appraisal) is Tier.WARNING and codes(appraisal) == ["data-late"]
    assert appraisal.verified_data is None and appraisal.state_updates == {}


def test_a_batch_from_an_earlier_boot_is_late() -> None:
    rig = Rig()
    rig.appraise(rig.batch())
    old = rig.batch()
    rig.chain.reboot(6)
    rig.appraise(rig.batch())
    appraisal = rig.appraise(old)
    assert codes(appraisal) == ["data-late"] and appraisal.verified_data is None


def test_a_second_batch_at_the_head_position_is_a_fork() -> None:
    rig = Rig()
    rig.appraise(rig.batch())
    head = rig.chain.head
    rig.appraise(rig.batch())
    rig.chain.seq, rig.chain.head = 1, head
    appraisal = rig.appraise(rig.batch())  # a different batch 2
    assert tier(appraisal) is Tier.CONTRAINDICATED and codes(appraisal) == ["chain-fork"]
    assert appraisal.verified_data is None


def test_a_batch_that_does_not_link_to_the_head_breaks_the_chain() -> None:
    rig = Rig()
    rig.appraise(rig.batch())
    rig.appraise(rig.batch())
    rig.chain.head = hashlib.sha256(b"elsewhere").digest()
    appraisal = rig.appraise(rig.batch())
    assert tier(appraisal) is Tier.CONTRAINDICATED and codes(appraisal) == ["chain-broken"]


def test_a_chain_restarted_without_a_reboot_is_contraindicated() -> None:
    rig = Rig()
    for _ in range(3):
        rig.appraise(rig.batch())
    rig.chain.restart()
    appraisal = rig.appraise(rig.batch())
    assert tier(appraisal) is Tier.CONTRAINDICATED and codes(appraisal) == ["chain-restart"]
    assert appraisal.verified_data is None and appraisal.state_updates == {}


def test_a_late_first_batch_after_joining_midway_is_late_not_a_restart() -> None:
    rig = Rig()
    first = rig.batch()
    rig.appraise(rig.batch())  # the hub joins at batch 2 (a gap)
    rig.appraise(rig.batch())
    appraisal = rig.appraise(first)
    assert codes(appraisal) == ["data-late"] and tier(appraisal) is Tier.WARNING


def test_a_new_boot_restarts_the_chain_cleanly() -> None:
    rig = Rig()
    rig.appraise(rig.batch())
    rig.appraise(rig.batch())
    rig.chain.reboot(6)
    appraisal = rig.appraise(rig.batch())
    assert tier(appraisal) is Tier.AFFIRMING, appraisal.problems
    assert (rig.state.chain_bootcount, rig.state.chain_seq) == (6, 1)


def test_the_genesis_rules() -> None:
    rig = Rig()
    rig.chain.head = hashlib.sha256(b"not genesis").digest()
    appraisal = rig.appraise(rig.batch())
    assert codes(appraisal) == ["chain-genesis"] and tier(appraisal) is Tier.CONTRAINDICATED
    rig = Rig()
    rig.appraise(rig.batch())
    rig.chain.head = wire.DATA_GENESIS
    appraisal = rig.appraise(rig.batch())
    assert "chain-genesis" in codes(appraisal) and tier(appraisal) is Tier.CONTRAINDICATED


def test_a_cut_tail_is_caught_by_the_next_boots_link() -> None:
    rig = Rig()
    rig.appraise(rig.batch())
    rig.batch()  # the last batch of boot 5 never arrives
    rig.chain.reboot(6)
    appraisal = rig.appraise(rig.batch())
    assert codes(appraisal) == ["chain-truncated"] and tier(appraisal) is Tier.WARNING
    assert appraisal.verified_data is not None  # the new batch itself is fine


def test_a_link_to_a_different_end_of_the_previous_chain_is_contraindicated() -> None:
    rig = Rig()
    rig.appraise(rig.batch())
    rig.appraise(rig.batch())
    rig.chain.seq, rig.chain.head = 1, hashlib.sha256(b"other").digest()  # the device says boot 5 ended at 1
    rig.chain.reboot(6)
    appraisal = rig.appraise(rig.batch())
    assert codes(appraisal) == ["chain-inconsistent"] and tier(appraisal) is Tier.CONTRAINDICATED


def test_the_state_layout_round_trips() -> None:
    chain = ChainState(3, 9, bytes(range(32)), None)
    assert ChainState.load(DeviceState(**chain.columns())) == chain  # type: ignore[arg-type]
    anchored = replace(chain, genesis=bytes(32))
    assert ChainState.load(DeviceState(**anchored.columns())) == anchored  # type: ignore[arg-type]


# --- appraise: the source --------------------------------------------------------------


@pytest.mark.parametrize(("firmware", "expected"), [
    (Tier.NONE, Tier.WARNING), (Tier.WARNING, Tier.WARNING), (Tier.CONTRAINDICATED, Tier.CONTRAINDICATED),
])
def test_data_from_a_device_whose_firmware_is_not_affirming_is_never_republished(firmware: Tier,
                                                                                 expected: Tier) -> None:
    rig = Rig()
    rig.state = DeviceState(firmware_tier=int(firmware))
    appraisal = rig.appraise(rig.batch())
    assert tier(appraisal) is expected and appraisal.verified_data is None
    assert codes(appraisal) == ["unattested-source" if expected is Tier.WARNING else "source-contraindicated"]
    assert rig.state.chain_seq == 1  # the chain is still tracked


def test_data_produced_before_attesting_in_this_boot_is_never_republished() -> None:
    for context in (None, (4, 7)):
        rig = Rig()
        batch = rig.batch()
        raw = resign(batch.raw, rig, lambda c, v=context: c.__setitem__(
            wire.DATA_ATTESTATION, None if v is None else list(v)))
        appraisal = appraise_batch(DEVICE, rig.verify(raw), AppraisalInputs(None, Policy("env-sensor"), rig.state))
        assert codes(appraisal) == ["unattested-source"] and appraisal.verified_data is None


def test_records_round_trip_through_the_simulators_encoder() -> None:
    records = ((1, "temperature_mC", 21000), (2, "humidity_permille", 455))
    assert cbor2.loads(encode_records(records)) == [list(r) for r in records]
