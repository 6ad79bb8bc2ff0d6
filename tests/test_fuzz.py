"""Property-based fuzzing of the decoder, the firmware scheme and the pipeline.

Whatever arrives, the only outcomes are CoseError / EvidenceError or a negative verdict: no other
exception escapes, and nothing hostile is ever affirmed.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from helpers import SEED, HubEnv, anchor_for, build_env, honest_claims, sign_claims, sign_raw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_sim import firmware
from device_sim.device import SimDevice
from hub import wire
from hub.crypto.cose import CoseError, decode_sign1, verify_sign1
from hub.envelope import Incoming
from hub.schemes.base import EvidenceError
from hub.schemes.firmware import FirmwareScheme

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DEVICE = "smart-meter-0001"
NEGATIVE = {"rejected", "duplicate", "contraindicated"}
NONCE = b"E" + bytes(31)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64), st.floats(allow_nan=False),
    st.binary(max_size=40), st.text(max_size=20),
)
keys = st.one_of(st.integers(min_value=-70000, max_value=70000), st.text(max_size=5))
tags = st.sampled_from([0, 1, 2, 3, 4, 5, 18, 21, 24, 25, 28, 29, 30, 35, 36, 37, 258, 1004, 55799, 61, 96, 98])
cbor_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(keys, inner, max_size=5),
        st.builds(cbor2.CBORTag, tags, inner),
    ),
    max_leaves=25,
)
header_maps = st.dictionaries(
    st.sampled_from([wire.HDR_ALG, wire.HDR_CRIT, wire.HDR_CONTENT_TYPE, wire.HDR_KID, wire.HDR_X5CHAIN, 99]),
    st.one_of(st.sampled_from([wire.ALG_ES256, wire.ALG_ES384, wire.ALG_EDDSA, -999]), cbor_values),
    max_size=4,
)
protected_bytes = st.one_of(header_maps.map(cbor2.dumps), st.binary(max_size=30), st.just(b""))
signatures = st.one_of(st.binary(min_size=60, max_size=70), st.binary(max_size=8), cbor_values)
cose_shaped = st.builds(
    lambda tag, prot, unprot, payload, sig, extra: cbor2.dumps(
        cbor2.CBORTag(tag, [prot, unprot, payload, sig, *extra])
    ),
    st.sampled_from([18, 18, 18, 17, 98]),
    st.one_of(protected_bytes, cbor_values),
    st.one_of(header_maps, cbor_values),
    st.one_of(st.binary(max_size=60), st.none(), cbor_values),
    signatures,
    st.lists(cbor_values, max_size=1),
)
hostile_bytes = st.one_of(st.binary(max_size=300), cose_shaped, cbor_values.map(cbor2.dumps))


@pytest.fixture(scope="module")
def meter() -> SimDevice:
    return SimDevice(DEVICE, firmware.SMART_METER, seed=SEED)


@pytest.fixture(scope="module")
def hub_env() -> Iterator[HubEnv]:
    with tempfile.TemporaryDirectory(prefix="fuzz-hub-") as tmp:
        env = build_env(Path(tmp))
        env.add_device(DEVICE)
        try:
            yield env
        finally:
            env.close()


@FUZZ
@given(raw=hostile_bytes)
def test_decode_sign1_raises_only_cose_error(raw: bytes, meter: SimDevice) -> None:
    try:
        message = decode_sign1(raw)
        verify_sign1(message, meter.enrolled_key.public_key())
    except CoseError:
        return
    pytest.fail("hostile bytes verified")  # pragma: no cover


@FUZZ
@given(raw=hostile_bytes)
def test_firmware_verify_raises_only_evidence_error(raw: bytes, meter: SimDevice) -> None:
    with pytest.raises(EvidenceError):
        FirmwareScheme().verify(raw, anchor_for(meter))


def _mutated_claims(meter: SimDevice, data: st.DataObject) -> dict[Any, Any]:
    claims: dict[Any, Any] = honest_claims(meter, NONCE, 1)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        action = data.draw(st.sampled_from(["set", "drop", "add"]))
        key = data.draw(st.sampled_from(sorted(claims, key=str))) if claims else 1
        if action == "drop":
            claims.pop(key, None)
        elif action == "set":
            claims[key] = data.draw(cbor_values)
        else:
            claims[data.draw(keys)] = data.draw(cbor_values)
    return claims


@FUZZ
@given(data=st.data())
def test_signed_hostile_claims_raise_only_evidence_error(data: st.DataObject, meter: SimDevice) -> None:
    """Authenticated but structurally wrong claims: the claims parser is reached and must not crash."""
    payload = data.draw(st.one_of(cbor_values.map(cbor2.dumps), st.binary(max_size=50),
                                  st.builds(lambda: None).map(lambda _: b"")))
    if data.draw(st.booleans()):
        raw = sign_claims(_mutated_claims(meter, data), meter.enrolled_key, DEVICE)
    else:
        raw = sign_raw(payload, meter.enrolled_key,
                       protected={wire.HDR_ALG: wire.ALG_ES256, wire.HDR_KID: DEVICE.encode()})
    with contextlib.suppress(EvidenceError):
        FirmwareScheme().verify(raw, anchor_for(meter))


topics = st.one_of(
    st.just(wire.device_topic(DEVICE, wire.EVIDENCE)),
    st.just(wire.device_topic("smart-meter-0404", wire.EVIDENCE)),
    st.text(max_size=30),
    st.builds(lambda d, leaf: f"fleet/{d}/{leaf}", st.text(max_size=10), st.text(max_size=10)),
)
content_types = st.one_of(st.none(), st.just(wire.FIRMWARE_MEDIA_TYPE), st.text(max_size=20))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_pipeline_gives_only_negative_verdicts(data: st.DataObject, hub_env: HubEnv, meter: SimDevice) -> None:
    """Unsigned input only ever gets negative verdicts; signed-but-mutated claims (with a fresh nonce, so that
    appraisal is reached) may get any verdict, but nothing escapes ``process`` except through its outcome."""
    batch: list[Incoming] = []
    signed: list[bool] = []
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        is_signed = data.draw(st.booleans())
        if is_signed:
            claims = _mutated_claims(meter, data)
            if wire.NONCE in claims and claims[wire.NONCE] == NONCE:
                claims[wire.NONCE] = hub_env.epoch_nonce
            payload = sign_claims(claims, meter.enrolled_key, DEVICE)
        else:
            payload = data.draw(hostile_bytes)
        batch.append(Incoming(data.draw(topics), payload, data.draw(content_types)))
        signed.append(is_signed)
    outcome = hub_env.pipeline().process(batch)
    assert len(outcome.decisions) + len(outcome.dropped) == len(batch)
    routed = [s for m, s in zip(batch, signed, strict=True) if _is_device_topic(m.topic)]
    assert len(routed) == len(outcome.decisions)
    for was_signed, decision in zip(routed, outcome.decisions, strict=True):
        if not was_signed:
            assert decision.status in NEGATIVE, decision


def _is_device_topic(topic: str) -> bool:
    parts = topic.split("/")
    return len(parts) == 3 and parts[0] == wire.FLEET_ROOT and bool(parts[1])
