"""Key rotation: the new key is proven with the old; afterwards only the new key is accepted."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sim.device import SimDevice
from device_sim.rotation import next_key, rotation_message
from hub import wire
from hub.broker.process import MosquittoProcess
from hub.crypto.freshness import epoch_nonce
from hub.crypto.keys import load_public_pem, public_pem
from hub.schemes.base import EvidenceError, TrustAnchor
from hub.schemes.keyrotation import KeyRotationScheme
from hub.server.localhub import LocalHub
from tests.e2e import Observer, make_env, signed_payload

NONCE = epoch_nonce(b"s" * 32, 3)
DEVICE = "env-sensor-0001"


def _anchor(key: ec.EllipticCurvePrivateKey, device_id: str = DEVICE) -> TrustAnchor:
    return TrustAnchor(device_id, "env-sensor", key.public_key())


def _reason(raw: bytes, anchor: TrustAnchor) -> str:
    with pytest.raises(EvidenceError) as info:
        KeyRotationScheme().verify(raw, anchor)
    return info.value.reason


def test_rotation_proven_with_both_keys_is_accepted() -> None:
    old, new = next_key("t", DEVICE, 1), next_key("t", DEVICE, 2)
    claims = KeyRotationScheme().verify(rotation_message(DEVICE, old, new, NONCE), _anchor(old))
    assert claims.nonce == NONCE and claims.counter is None
    assert isinstance(claims.body, str)
    assert public_pem(load_public_pem(claims.body)) == public_pem(new.public_key())


def test_rotation_signed_by_a_key_that_is_not_enrolled_is_refused() -> None:
    old, new, thief = next_key("t", DEVICE, 1), next_key("t", DEVICE, 2), next_key("x", DEVICE, 1)
    assert _reason(rotation_message(DEVICE, thief, new, NONCE), _anchor(old)) == "bad-signature"


def test_proof_must_be_made_with_the_new_key() -> None:
    old, new, other = next_key("t", DEVICE, 1), next_key("t", DEVICE, 2), next_key("t", DEVICE, 3)
    raw = rotation_message(DEVICE, old, new, NONCE)
    forged = rotation_message(DEVICE, old, other, NONCE)  # proof by `other`, then claim `new` below
    import cbor2

    from hub.crypto.cose import decode_sign1, sign1

    payload = cbor2.loads(decode_sign1(forged).payload)
    payload[wire.ROT_NEW_KEY] = cbor2.loads(decode_sign1(raw).payload)[wire.ROT_NEW_KEY]
    tampered = sign1(cbor2.dumps(payload), old, kid=DEVICE.encode())
    assert _reason(tampered, _anchor(old)) == "bad-proof"


@pytest.mark.parametrize("field", ["device", "nonce", "old-key"])
def test_proof_bound_to_device_nonce_and_old_key(field: str) -> None:
    old, new = next_key("t", DEVICE, 1), next_key("t", DEVICE, 2)
    import hashlib

    import cbor2

    from device_sim import cose
    from device_sim.rotation import spki

    body = [DEVICE, NONCE, hashlib.sha256(spki(old)).digest()]
    index = {"device": 0, "nonce": 1, "old-key": 2}[field]
    body[index] = "env-sensor-0002" if index == 0 else b"\x00" * 32
    proof = cose.sign1(cbor2.dumps(body), new, DEVICE.encode())
    payload = cbor2.dumps({wire.EAT_PROFILE: wire.KEY_ROTATION_PROFILE, wire.NONCE: NONCE,
                           wire.ROT_NEW_KEY: spki(new), wire.ROT_PROOF: proof})
    assert _reason(cose.sign1(payload, old, DEVICE.encode()), _anchor(old)) == "bad-proof"


def test_rotating_to_the_same_key_is_refused() -> None:
    old = next_key("t", DEVICE, 1)
    assert _reason(rotation_message(DEVICE, old, old, NONCE), _anchor(old)) == "bad-claim"


@pytest.mark.broker
def test_rotation_through_the_broker_switches_the_accepted_key(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 1, "honest:1")
    device: SimDevice = env.devices[0]
    topic = wire.device_topic(device.device_id, wire.RESULT)
    observer = Observer(broker.host, broker.port, (topic,)).start()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rotating-device", protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()

    def send(raw: bytes, media_type: str) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = media_type
        client.publish(wire.device_topic(device.device_id, wire.EVIDENCE), raw, qos=1,
                       properties=props).wait_for_publish(5)

    with LocalHub(env.settings) as hub:
        nonce = epoch_nonce(hub.workers[0].keys.nonce_secret, 1)
        old, new = device.enrolled_key, next_key("e2e", device.device_id, 2)
        send(rotation_message(device.device_id, old, new, nonce), wire.KEY_ROTATION_MEDIA_TYPE)
        assert observer.wait(lambda: len(observer.on(topic)) == 1)
        stale = device.make_evidence(nonce)  # still signed with the old key
        device.adopt_key(new)
        time.sleep(0.2)
        send(stale, wire.FIRMWARE_MEDIA_TYPE)
        send(device.make_evidence(nonce), wire.FIRMWARE_MEDIA_TYPE)
        assert observer.wait(lambda: len(observer.on(topic)) == 3)
    client.disconnect()
    client.loop_stop()
    observer.stop()
    rotation, old_signed, new_signed = (signed_payload(m.payload, env.keys) for m in observer.on(topic))
    assert rotation[wire.SUBMODS]["key-rotation"][wire.EAR_STATUS] == 2
    assert "bad-signature" in old_signed[wire.RES_PROBLEMS][0]
    assert new_signed[wire.SUBMODS]["firmware"][wire.EAR_STATUS] == 2
    store = env.store()
    with store.reading() as conn:
        record = store.devices(conn, [device.device_id])[device.device_id]
    store.close()
    assert record.key_version == 2 and record.public_key_pem == public_pem(new.public_key())
