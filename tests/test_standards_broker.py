"""Standards-true evidence and results through a real Mosquitto and hub: the CWT tag around firmware evidence,
PSA tokens of an older profile and as COSE_Mac0, out-of-range nonces, and duplicates that never replace the
standing result."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sim import cose as sim_cose
from device_sim import keys as sim_keys
from device_sim import psa as sim_psa
from device_sim.telemetry import TelemetryChain
from hub import wire
from hub.appraisal.operations import Enrolment
from hub.broker.process import MosquittoProcess
from hub.crypto.freshness import epoch_nonce
from hub.crypto.hubkeys import write_device_mac_key
from hub.server.localhub import LocalHub, enrol_all
from tests.e2e import Observer, make_env, signed_payload

pytestmark = pytest.mark.broker

P2 = "psa-sensor-0201"
MAC = "psa-sensor-0202"
MAC_KEY = hashlib.sha256(b"standards broker test mac key").digest()


def psa_claims(device_id: str, nonce: bytes) -> dict[int, object]:
    return sim_psa.claims_map(sim_psa.PsaToken(
        nonce=nonce, instance_id=sim_psa.instance_id("std", device_id), implementation_id=sim_psa.implementation_id(),
        client_id=1, lifecycle=wire.PSA_LIFECYCLE_SECURED, boot_seed=bytes(32),
        components=sim_psa.software_components("1.2.0")))


def as_profile_2(claims: dict[int, object]) -> dict[int, object]:
    """The same token as a TF-M platform on profile http://arm.com/psa/2.0.0 writes it (boot seed 2397)."""
    out = {k: v for k, v in claims.items() if k != wire.PSA_BOOT_SEED}
    out[wire.EAT_PROFILE] = wire.PSA_PROFILE_2
    out[wire.PSA_LEGACY_BOOT_SEED] = claims[wire.PSA_BOOT_SEED]
    return out


def mac0(claims: dict[int, object], key: bytes) -> bytes:
    protected = cbor2.dumps({1: 5})
    payload = cbor2.dumps(claims)
    tag = hmac.new(key, cbor2.dumps(["MAC0", protected, b"", payload]), hashlib.sha256).digest()
    return cbor2.dumps(cbor2.CBORTag(17, [protected, {}, payload, tag]))


def test_standards_true_evidence_through_the_broker(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 1, "honest:1")
    device = env.devices[0]
    p2_key = sim_keys.device_private_key("std", P2)
    enrol_all(env.settings, [
        Enrolment(P2, "psa-sensor", sim_keys.public_key_pem(p2_key).decode(), sim_psa.instance_id("std", P2)),
        Enrolment(MAC, "psa-sensor", None, sim_psa.instance_id("std", MAC)),
    ])
    write_device_mac_key(env.settings, MAC, MAC_KEY)
    ids = (device.device_id, P2, MAC)
    observer = Observer(broker.host, broker.port, tuple(wire.device_topic(i, wire.RESULT) for i in ids)).start()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="standards-device", protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()

    def send(device_id: str, raw: bytes, media_type: str, leaf: str = wire.EVIDENCE) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = media_type
        client.publish(wire.device_topic(device_id, leaf), raw, qos=1, properties=props).wait_for_publish(5)

    def results(device_id: str) -> list[dict[object, object]]:
        return [signed_payload(m.payload, env.keys) for m in observer.on(wire.device_topic(device_id, wire.RESULT))]

    with LocalHub(env.settings) as hub:
        nonce = epoch_nonce(hub.workers[0].keys.nonce_secret, 1)
        # firmware evidence inside the CWT tag 61 (RFC 9711 allows it)
        evidence = device.make_evidence(nonce)
        send(device.device_id, cbor2.dumps(cbor2.CBORTag(wire.CWT_TAG, cbor2.loads(evidence))),
             wire.FIRMWARE_MEDIA_TYPE)
        # a PSA token of the older profile http://arm.com/psa/2.0.0, and one MACed with a symmetric key
        send(P2, sim_cose.sign1(cbor2.dumps(as_profile_2(psa_claims(P2, nonce))), p2_key,
                                sim_psa.instance_id("std", P2)), wire.PSA_MEDIA_TYPE)
        send(MAC, mac0(psa_claims(MAC, nonce), MAC_KEY), wire.PSA_MEDIA_TYPE)
        assert observer.wait(lambda: all(results(i) for i in ids)), [results(i) for i in ids]
        # a data batch, then its exact bytes again: answered, but the firmware result stays retained
        chain = TelemetryChain(device.device_id, device.device_class, device.ueid, device.bootcount)
        sent = cbor2.loads(cbor2.loads(evidence).value[2])
        batch = chain.next_batch(device.enrolled_key, nonce, int(time.time()),
                                 (sent[wire.BOOTCOUNT], sent[wire.EVIDENCE_SEQ]))
        send(device.device_id, batch.raw, wire.DATA_MEDIA_TYPE, wire.DATA)
        send(device.device_id, batch.raw, wire.DATA_MEDIA_TYPE, wire.DATA)
        assert observer.wait(lambda: len(results(device.device_id)) >= 3)
        # a nonce of 4,000 bytes: rejected, and the result does not echo it
        send(MAC, mac0(psa_claims(MAC, b"\x01" * 4000), MAC_KEY), wire.PSA_MEDIA_TYPE)
        assert observer.wait(lambda: len(results(MAC)) >= 2)
        late = Observer(broker.host, broker.port, (wire.device_topic(device.device_id, wire.RESULT),)).start()
        assert late.wait(lambda: bool(late.on(wire.device_topic(device.device_id, wire.RESULT))))
        retained = [m for m in late.on(wire.device_topic(device.device_id, wire.RESULT)) if m.retain]
        late.stop()
    observer.stop()
    client.loop_stop()
    client.disconnect()

    firmware, data_first, data_again = results(device.device_id)[:3]
    assert firmware[wire.SUBMODS] == {"firmware": firmware[wire.SUBMODS]["firmware"]}
    assert firmware[wire.SUBMODS]["firmware"][wire.EAR_STATUS] == 2, firmware[wire.RES_PROBLEMS]
    assert "data" in data_first[wire.SUBMODS] and data_again == data_first  # the stored result, same claims
    assert len(retained) == 1 and "firmware" in signed_payload(retained[0].payload, env.keys)[wire.SUBMODS]
    for psa_device in (P2, MAC):
        first = results(psa_device)[0]
        assert first[wire.SUBMODS]["psa"][wire.EAR_STATUS] == 2, first[wire.RES_PROBLEMS]
    big = results(MAC)[1]
    assert big[wire.SUBMODS]["psa"][wire.EAR_STATUS] == 96 and wire.NONCE not in big
    assert big[wire.RES_PROBLEMS][0].startswith("bad-nonce")
