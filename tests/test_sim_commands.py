"""Command and epoch handling by a SimDevice, with no MQTT.

Hub messages are signed here by hand (cbor2 + cryptography), independently of
device_sim's own encoder.
"""

from __future__ import annotations

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from device_sim import Rejection, SimDevice
from device_sim.commands import MessageError, parse_epoch
from hub import wire

NOW = 1_800_000_000
DEVICE = "env-sensor-0001"


def hub_sign(
    payload: dict[int, object], key: ec.EllipticCurvePrivateKey, unprotected: dict[int, object] | None = None
) -> bytes:
    protected = cbor2.dumps({1: -7, 4: b"hub"} if unprotected is None else {4: b"hub"})
    tbs = cbor2.dumps(["Signature1", protected, b"", cbor2.dumps(payload)])
    r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hashes.SHA256())))
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected or {}, cbor2.dumps(payload), sig]))


@pytest.fixture
def hub_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def device(hub_key: ec.EllipticCurvePrivateKey) -> SimDevice:
    return SimDevice(DEVICE, "env-sensor", hub_key=hub_key.public_key(), clock=lambda: NOW + 0.25)


def command(
    kind: str, seq: int, *, sub: str = DEVICE, exp: int = NOW + 60, extra: dict[int, object] | None = None
) -> dict[int, object]:
    return {2: sub, 6: NOW, 4: exp, -65550: kind, -65551: seq, **(extra or {})}


def test_quarantine_then_release(device: SimDevice, hub_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = device.handle_command(hub_sign(command("quarantine", 1, extra={-65552: "bad firmware"}), hub_key))
    assert outcome.accepted and outcome.command_type == "quarantine" and device.quarantined
    assert outcome.command is not None and outcome.command.reason == "bad firmware"
    assert device.handle_command(hub_sign(command("release", 2), hub_key)).accepted
    assert not device.quarantined
    assert device.last_command_seq == 2


def test_forged_command_is_rejected(device: SimDevice) -> None:
    mallory = ec.generate_private_key(ec.SECP256R1())
    outcome = device.handle_command(hub_sign(command("quarantine", 1), mallory))
    assert not outcome.accepted and outcome.rejection is Rejection.FORGED and not device.quarantined


def test_alg_only_in_the_unprotected_header_is_rejected(device: SimDevice, hub_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = device.handle_command(hub_sign(command("quarantine", 1), hub_key, unprotected={1: -7}))
    assert outcome.rejection is Rejection.FORGED and not device.quarantined


def test_misaddressed_and_expired(device: SimDevice, hub_key: ec.EllipticCurvePrivateKey) -> None:
    other = device.handle_command(hub_sign(command("quarantine", 1, sub="env-sensor-0002"), hub_key))
    assert other.rejection is Rejection.MISADDRESSED
    late = device.handle_command(hub_sign(command("quarantine", 2, exp=NOW), hub_key))
    assert late.rejection is Rejection.EXPIRED
    assert not device.quarantined and device.last_command_seq is None


def test_replayed_seq_and_retained_redelivery_apply_once(
    device: SimDevice, hub_key: ec.EllipticCurvePrivateKey
) -> None:
    quarantine = hub_sign(command("quarantine", 5), hub_key)
    assert device.handle_command(quarantine).accepted
    again = device.handle_command(quarantine)  # the retained copy, re-delivered on reconnect
    assert again.rejection is Rejection.REPLAYED and device.quarantined
    assert device.handle_command(hub_sign(command("release", 6), hub_key)).accepted
    assert device.handle_command(quarantine).rejection is Rejection.REPLAYED
    assert device.handle_command(hub_sign(command("quarantine", 4), hub_key)).rejection is Rejection.REPLAYED
    assert not device.quarantined
    assert [(c.accepted, c.rejection) for c in device.command_log] == [
        (True, None),
        (False, Rejection.REPLAYED),
        (True, None),
        (False, Rejection.REPLAYED),
        (False, Rejection.REPLAYED),
    ]


def test_challenge_answers_with_its_nonce(device: SimDevice, hub_key: ec.EllipticCurvePrivateKey) -> None:
    nonce = b"C" + bytes(31)
    outcome = device.handle_command(hub_sign(command("challenge", 1, extra={10: nonce}), hub_key))
    assert outcome.accepted and outcome.evidence is not None
    claims = cbor2.loads(cbor2.loads(outcome.evidence).value[2])
    assert claims[10] == nonce and claims[-65537] == 1
    assert device.evidence_log[-1].kind.value == "challenge"
    assert device.last_command_seq is None  # challenges do not consume the state-changing sequence
    assert (
        device.handle_command(hub_sign(command("challenge", 2, extra={10: nonce}), hub_key)).rejection
        is Rejection.REPLAYED
    )


def test_receipt_and_remediate(device: SimDevice, hub_key: ec.EllipticCurvePrivateKey) -> None:
    device.make_evidence(b"n" * 32)
    device.make_evidence(b"n" * 32)
    assert len(device.unacknowledged()) == 2
    receipt = hub_sign(command("receipt", 1, extra={-65553: [[1, 1], [1, 2]]}), hub_key)
    assert device.handle_command(receipt).accepted
    assert device.acknowledged == {(1, 1), (1, 2)} and device.unacknowledged() == ()
    assert device.handle_command(hub_sign(command("remediate", 3, extra={-65554: "1.2.0"}), hub_key)).accepted
    assert device.remediations == ("1.2.0",)


@pytest.mark.parametrize(
    "payload",
    [
        {2: DEVICE, 6: NOW, 4: NOW + 60, -65550: "self-destruct", -65551: 1},
        {2: DEVICE, 6: NOW, 4: NOW + 60, -65550: "quarantine"},
        {2: DEVICE, 6: NOW, -65550: "quarantine", -65551: 1},
        {2: DEVICE, 6: NOW, 4: NOW + 60, -65550: "challenge", -65551: 1},
        {2: DEVICE, 6: NOW, 4: NOW + 60, -65550: "receipt", -65551: 1, -65553: [[1]]},
    ],
)
def test_malformed_commands(device: SimDevice, hub_key: ec.EllipticCurvePrivateKey, payload: dict[int, object]) -> None:
    assert device.handle_command(hub_sign(payload, hub_key)).rejection is Rejection.MALFORMED


def test_garbage_and_missing_hub_key(hub_key: ec.EllipticCurvePrivateKey) -> None:
    device = SimDevice(DEVICE, "env-sensor", hub_key=hub_key.public_key())
    assert device.handle_command(b"\x00garbage").rejection is Rejection.MALFORMED
    keyless = SimDevice(DEVICE, "env-sensor")
    assert keyless.handle_command(hub_sign(command("quarantine", 1), hub_key)).rejection is Rejection.FORGED
    report = device.report()
    assert report["commands"] == [c.to_json() for c in device.command_log]


def test_epoch_parsing(hub_key: ec.EllipticCurvePrivateKey) -> None:
    nonce = b"E" + bytes(31)
    raw = hub_sign({265: wire.EPOCH_PROFILE, 6: NOW, -65560: 7, 10: nonce}, hub_key)
    epoch = parse_epoch(raw, hub_key.public_key())
    assert (epoch.epoch_id, epoch.nonce, epoch.iat) == (7, nonce, NOW)
    with pytest.raises(MessageError) as info:
        parse_epoch(raw, ec.generate_private_key(ec.SECP256R1()).public_key())
    assert info.value.reason is Rejection.FORGED
    for bad in (
        {265: "other", 6: NOW, -65560: 7, 10: nonce},
        {265: wire.EPOCH_PROFILE, 6: NOW, -65560: 7, 10: b"short"},
        {265: wire.EPOCH_PROFILE, 6: NOW, 10: nonce},
    ):
        with pytest.raises(MessageError):
            parse_epoch(hub_sign(bad, hub_key), hub_key.public_key())
    pem = hub_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY")


def test_unacknowledged_evidence_is_resent_a_bounded_number_of_times(hub_key: ec.EllipticCurvePrivateKey) -> None:
    now = [1000.0]
    device = SimDevice(DEVICE, "env-sensor", hub_key=hub_key.public_key(), clock=lambda: now[0])
    first = device.make_evidence(b"n" * 32)
    second = device.make_evidence(b"n" * 32)
    assert device.resend_due(5.0) == []
    now[0] += 10
    assert device.resend_due(5.0) == [first, second]
    receipt = {2: DEVICE, 6: 1000, 4: 2000, -65550: "receipt", -65551: 1, -65553: [[1, 1]]}
    assert device.handle_command(hub_sign(receipt, hub_key)).accepted
    assert device.resend_due(5.0) == [second]
    assert device.resend_due(5.0, max_resends=3) == [second]
    assert device.resend_due(5.0, max_resends=3) == []
