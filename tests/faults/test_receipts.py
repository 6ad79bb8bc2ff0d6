"""Receipts on the device side: a verified result about this device naming its evidence, and nothing else;
re-sends with backoff until then."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from device_sim.device import SimDevice
from hub.appraisal.messages import ResultClaims, sign_result
from hub.reference.trust import Tier, TrustVector

DEVICE = "env-sensor-0001"
KID = b"hub-kid"


def _result(key: ec.EllipticCurvePrivateKey, ref: str, sub: str = DEVICE) -> bytes:
    claims = ResultClaims(sub, "firmware", TrustVector(), Tier.AFFIRMING, 1000, (), ref, None, "env-sensor@1", "none")
    return sign_result(claims, key, KID)


def _device(hub: ec.EllipticCurvePrivateKey, now: list[float]) -> SimDevice:
    return SimDevice(DEVICE, "env-sensor", hub_key=hub.public_key(), clock=lambda: now[0])


def test_a_result_naming_the_evidence_is_its_receipt() -> None:
    hub = ec.generate_private_key(ec.SECP256R1())
    device = _device(hub, [1000.0])
    device.make_evidence(b"n" * 32)
    assert device.handle_result(_result(hub, "1:1"))
    assert device.unacknowledged() == ()


def test_results_that_must_not_count_as_receipts() -> None:
    hub = ec.generate_private_key(ec.SECP256R1())
    forger = ec.generate_private_key(ec.SECP256R1())
    device = _device(hub, [1000.0])
    device.make_evidence(b"n" * 32)
    assert not device.handle_result(_result(forger, "1:1")), "signed by another key"
    assert not device.handle_result(_result(hub, "1:1", sub="env-sensor-0002")), "about another device"
    assert not device.handle_result(_result(hub, "raw:" + "0" * 32)), "names no counter"
    assert not device.handle_result(_result(hub, "1:\u00b2")), "not ASCII digits"
    assert not device.handle_result(b"\xa0"), "not COSE"
    assert len(device.unacknowledged()) == 1


def test_resends_back_off_and_stop_at_the_receipt() -> None:
    hub = ec.generate_private_key(ec.SECP256R1())
    now = [1000.0]
    device = _device(hub, now)
    raw = device.make_evidence(b"n" * 32)
    sent_at = []
    for _ in range(80):  # 8 s in steps of 0.1 s
        now[0] += 0.1
        if device.resend_due(0.5, 10, backoff=2.0) == [raw]:
            sent_at.append(round(now[0] - 1000.0, 1))
    assert sent_at == [0.5, 1.5, 3.5, 7.5]  # waits of 0.5, 1, 2, 4 s
    assert device.handle_result(_result(hub, "1:1"))
    now[0] += 100
    assert device.resend_due(0.5, 10, backoff=2.0) == []
    assert device.resent == 4
