"""eat_nonce is 8..64 bytes (RFC 9711 4.1) in every scheme; a result never echoes more than the standard allows."""

from __future__ import annotations

import dataclasses

import cbor2
import pytest
from helpers import HubEnv, env_fixture, incoming, only, publishes_on

from device_sim import psa as sim_psa
from device_sim.device import SimDevice
from device_sim.rotation import next_key, rotation_message
from device_sim.telemetry import TelemetryChain
from hub import wire
from hub.appraisal.messages import MAX_PROBLEM_CHARS, MAX_PROBLEMS, ResultClaims, sign_result, sign_result_jwt
from hub.crypto.keys import generate_p256
from hub.reference.trust import Tier, TrustVector
from hub.schemes.base import EvidenceError, TrustAnchor
from hub.schemes.data import DataScheme
from hub.schemes.keyrotation import KeyRotationScheme
from hub.schemes.psa import PsaScheme
from tests.test_psa_scheme import KEY as PSA_KEY
from tests.test_psa_scheme import _anchor as psa_anchor
from tests.test_psa_scheme import _token as psa_token

A = "smart-meter-0001"
OUT_OF_RANGE = [0, 7, 65, 4000]


env = env_fixture(A)


def result_payload(outcome: object) -> dict[object, object]:
    [message] = publishes_on(outcome, wire.RESULT)  # type: ignore[arg-type]
    payload = cbor2.loads(cbor2.loads(message.payload).value[2])
    assert isinstance(payload, dict)
    return payload


# --- firmware, through the pipeline -------------------------------------------------------------


@pytest.mark.parametrize("size", OUT_OF_RANGE)
def test_firmware_nonce_out_of_range_is_rejected_and_never_echoed(env: HubEnv, size: int) -> None:
    outcome = env.pipeline().process([incoming(A, env.evidence(A, env.claims(A, nonce=b"\xab" * size)))])
    decision = only(outcome)
    assert decision.status == "rejected" and decision.reason == "bad-nonce"
    assert f"got {size}" in decision.problems[0]
    payload = result_payload(outcome)
    assert wire.NONCE not in payload
    assert len(publishes_on(outcome, wire.RESULT)[0].payload) < 1024  # nothing of a 4,000-byte nonce
    assert [p.retain for p in publishes_on(outcome, wire.RESULT)] == [False]
    assert env.device(A).status != "quarantined"


@pytest.mark.parametrize("size", [8, 64])
def test_firmware_nonce_at_the_bounds_decodes_and_fails_only_freshness(env: HubEnv, size: int) -> None:
    """8 and 64 bytes are valid eat_nonce sizes: decoded, then refused as not issued by this hub."""
    nonce = b"\x01" * size
    outcome = env.pipeline().process([incoming(A, env.evidence(A, env.claims(A, nonce=nonce)))])
    decision = only(outcome)
    assert decision.reason == "bad-nonce" and "RFC 9711" not in decision.problems[0]
    assert result_payload(outcome)[wire.NONCE] == nonce


# --- each scheme's decoder ------------------------------------------------------------------------


@pytest.mark.parametrize("size", OUT_OF_RANGE)
def test_data_batch_nonce_out_of_range_is_refused(size: int) -> None:
    device = SimDevice("env-sensor-0001", "env-sensor", seed="nonce-tests")
    chain = TelemetryChain(device.device_id, "env-sensor", device.ueid, 1)
    batch = chain.next_batch(device.enrolled_key, b"\x05" * size, 1_767_225_600, (1, 1))
    anchor = TrustAnchor(device.device_id, "env-sensor", device.enrolled_key.public_key(), device.ueid)
    with pytest.raises(EvidenceError) as err:
        DataScheme().verify(batch.raw, anchor)
    assert err.value.reason == "bad-nonce" and err.value.authenticated


@pytest.mark.parametrize("size", OUT_OF_RANGE)
def test_key_rotation_nonce_out_of_range_is_refused(size: int) -> None:
    old, new = next_key("t", "env-sensor-0001", 1), next_key("t", "env-sensor-0001", 2)
    raw = rotation_message("env-sensor-0001", old, new, b"\x06" * size)
    with pytest.raises(EvidenceError) as err:
        KeyRotationScheme().verify(raw, TrustAnchor("env-sensor-0001", "env-sensor", old.public_key()))
    assert err.value.reason == ("too-large" if size == 4000 else "bad-nonce")  # the message limit comes first


@pytest.mark.parametrize("size", OUT_OF_RANGE)
def test_psa_nonce_out_of_range_is_refused(size: int) -> None:
    raw = sim_psa.sign_token(psa_token(nonce=b"\x07" * size), PSA_KEY)
    with pytest.raises(EvidenceError) as err:
        PsaScheme().verify(raw, psa_anchor())
    assert err.value.reason == "bad-nonce"


# --- what a result can echo ---------------------------------------------------------------------


def test_a_result_echoes_a_bounded_number_of_bounded_problems() -> None:
    """Problems quote device-sent names (components, processes): a result stays small whatever they are."""
    problems = tuple(f"process {'x' * 5000!r} is not allowed" for _ in range(300))
    claims = ResultClaims("d", "firmware", TrustVector(runtime_opaque=96), Tier.CONTRAINDICATED, 1, problems,
                          "r" * 5000, None, "c@1", "quarantine", b"\x00" * 4000)
    key = generate_p256()
    cwt = sign_result(claims, key, b"kid")
    payload = cbor2.loads(cbor2.loads(cwt).value[2])
    assert len(payload[wire.RES_PROBLEMS]) == MAX_PROBLEMS
    assert all(len(p) <= MAX_PROBLEM_CHARS for p in payload[wire.RES_PROBLEMS])
    assert payload[wire.RES_PROBLEMS][-1] == f"... and {300 - MAX_PROBLEMS + 1} more problems"
    assert wire.NONCE not in payload and len(payload[wire.RES_EVIDENCE_REF]) <= 160
    assert len(cwt) < 4096 and len(sign_result_jwt(claims, key, b"kid")) < 8192


def test_a_psa_nonce_of_64_bytes_is_echoed_in_cbor_but_not_past_74_characters_in_json() -> None:
    claims = ResultClaims("d", "psa", TrustVector(instance_identity=2), Tier.AFFIRMING, 1, (), "ref", None,
                          "c@1", "affirm", b"\x01" * 64)
    assert cbor2.loads(claims.payload())[wire.NONCE] == b"\x01" * 64
    assert "eat_nonce" not in claims.json_claims()  # 86 base64url characters > tstr .size (10..74)
    shorter = dataclasses.replace(claims, nonce=b"\x01" * 32)
    assert claims.json_claims().keys() | {"eat_nonce"} == shorter.json_claims().keys()
