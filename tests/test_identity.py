"""Certificate identities: x5chain to a manufacturer CA, CN = device id, no key substitution."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sim.device import SimDevice
from hub import wire
from hub.appraisal.operations import OperationError, enrolment_from_certificate
from hub.broker.process import MosquittoProcess
from hub.crypto import pki
from hub.crypto.cose import decode_sign1, sign1
from hub.crypto.freshness import epoch_nonce
from hub.schemes.base import EvidenceError, TrustAnchor
from hub.schemes.firmware import FirmwareScheme
from hub.server.localhub import LocalHub
from tests.e2e import Observer, make_env, signed_payload

NONCE = epoch_nonce(b"k" * 32, 1)


def _evidence(device: SimDevice, chain: list[bytes] | bytes, *, unprotected: bool = False,
              nonce: bytes = NONCE) -> bytes:
    payload = decode_sign1(device.make_evidence(nonce)).payload
    if unprotected:
        import cbor2

        signed = decode_sign1(sign1(payload, device.enrolled_key, kid=device.device_id.encode()))
        return cbor2.dumps(cbor2.CBORTag(18, [signed.protected_bytes, {wire.HDR_X5CHAIN: chain}, payload,
                                              signed.signature]))
    return sign1(payload, device.enrolled_key, kid=device.device_id.encode(),
                 extra_protected={wire.HDR_X5CHAIN: chain})


def _cert(ca: pki.CertificateAuthority, tmp: Path, device: SimDevice) -> x509.Certificate:
    issued = pki.issue_device_cert(ca, tmp, device.device_id, public_key=device.enrolled_key.public_key())
    return issued.certificate


def _der(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


@pytest.fixture
def ca(tmp_path: Path) -> pki.CertificateAuthority:
    return pki.create_ca(tmp_path / "ca", "Acme Devices CA")


def _anchor(device: SimDevice, ca: pki.CertificateAuthority, *, key: bool = False,
            now: float | None = None) -> TrustAnchor:
    return TrustAnchor(device.device_id, device.device_class,
                       device.enrolled_key.public_key() if key else None, device.ueid,
                       ca_certificates=(ca.certificate,), now=now)


def test_chain_to_the_manufacturer_ca_identifies_a_device_enrolled_without_a_key(ca, tmp_path) -> None:
    device = SimDevice("env-sensor-0001", "env-sensor")
    raw = _evidence(device, [_der(_cert(ca, tmp_path, device)), _der(ca.certificate)])
    claims = FirmwareScheme().verify(raw, _anchor(device, ca))
    assert claims.device_id == device.device_id


def test_leaf_alone_as_a_single_bstr_is_accepted(ca, tmp_path) -> None:
    device = SimDevice("env-sensor-0001", "env-sensor")
    raw = _evidence(device, _der(_cert(ca, tmp_path, device)))
    assert FirmwareScheme().verify(raw, _anchor(device, ca)).nonce == NONCE


def _reason(raw: bytes, anchor: TrustAnchor) -> str:
    with pytest.raises(EvidenceError) as info:
        FirmwareScheme().verify(raw, anchor)
    return info.value.reason


def test_without_key_or_chain_there_is_no_identity(ca) -> None:
    device = SimDevice("env-sensor-0001", "env-sensor")
    assert _reason(device.make_evidence(NONCE), _anchor(device, ca)) == "no-key"


def test_chain_from_another_ca_is_refused(ca, tmp_path) -> None:
    device = SimDevice("env-sensor-0001", "env-sensor")
    rogue = pki.create_ca(tmp_path / "rogue", "Rogue CA")
    raw = _evidence(device, _der(_cert(rogue, tmp_path / "r", device)))
    assert _reason(raw, _anchor(device, ca)) == "untrusted-chain"


def test_certificate_of_another_device_is_refused(ca, tmp_path) -> None:
    device, other = SimDevice("env-sensor-0001", "env-sensor"), SimDevice("env-sensor-0002", "env-sensor")
    cert = pki.issue_device_cert(ca, tmp_path, other.device_id, public_key=device.enrolled_key.public_key())
    raw = _evidence(device, _der(cert.certificate))
    assert _reason(raw, _anchor(device, ca)) == "cn-mismatch"


def test_x5chain_cannot_substitute_the_enrolled_key(ca, tmp_path) -> None:
    device = SimDevice("env-sensor-0001", "env-sensor")
    attacker_key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.issue_device_cert(ca, tmp_path, device.device_id, public_key=attacker_key.public_key())
    payload = decode_sign1(device.make_evidence(NONCE)).payload
    raw = sign1(payload, attacker_key, kid=device.device_id.encode(),
                extra_protected={wire.HDR_X5CHAIN: _der(cert.certificate)})
    assert _reason(raw, _anchor(device, ca, key=True)) == "key-substitution"


def test_x5chain_in_the_unprotected_header_is_refused(ca, tmp_path) -> None:
    device = SimDevice("env-sensor-0001", "env-sensor")
    raw = _evidence(device, _der(_cert(ca, tmp_path, device)), unprotected=True)
    assert _reason(raw, _anchor(device, ca)) == "x5chain-unprotected"


def test_expired_certificate_is_refused(ca, tmp_path) -> None:
    device = SimDevice("env-sensor-0001", "env-sensor")
    raw = _evidence(device, _der(_cert(ca, tmp_path, device)))
    in_twenty_years = time.time() + 20 * 365 * 86400
    assert _reason(raw, _anchor(device, ca, now=in_twenty_years)) == "untrusted-chain"


def _crafted_cert(ca: pki.CertificateAuthority, cn: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:x")]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


@pytest.mark.parametrize("cn", ["fleet/a", "a+b", "a#", "bad\x00id", "tab\there"])
def test_unsafe_common_names_are_refused(ca, cn: str) -> None:
    device = SimDevice("env-sensor-0001", "env-sensor")
    cert = _crafted_cert(ca, cn, device.enrolled_key)
    raw = _evidence(device, _der(cert))
    assert _reason(raw, _anchor(device, ca)) in ("unsafe-cn", "cn-mismatch")
    from cryptography.hazmat.primitives.serialization import Encoding

    with pytest.raises(OperationError):
        enrolment_from_certificate(cert.public_bytes(Encoding.PEM).decode(), "env-sensor", [ca.certificate])


def test_enrolment_by_certificate_takes_the_id_from_the_cn(ca, tmp_path) -> None:
    device = SimDevice("env-sensor-0007", "env-sensor")
    cert = _cert(ca, tmp_path, device)
    from cryptography.hazmat.primitives.serialization import Encoding

    entry = enrolment_from_certificate(cert.public_bytes(Encoding.PEM).decode(), "env-sensor", [ca.certificate])
    assert entry.device_id == device.device_id and entry.public_key_pem is not None
    rogue = pki.create_ca(tmp_path / "rogue", "Rogue CA")
    with pytest.raises(OperationError, match="certificate"):
        enrolment_from_certificate(cert.public_bytes(Encoding.PEM).decode(), "env-sensor", [rogue.certificate])


@pytest.mark.broker
def test_ca_issued_device_is_attested_through_the_broker(broker: MosquittoProcess, tmp_path: Path, ca) -> None:
    ca_file = tmp_path / "manufacturer-ca.pem"
    from cryptography.hazmat.primitives.serialization import Encoding

    ca_file.write_bytes(ca.certificate.public_bytes(Encoding.PEM))
    env = make_env(broker, tmp_path, 1, "honest:1", manufacturer_cas=(str(ca_file),))
    device = env.devices[0]
    store = env.store()
    with store.transaction() as conn:  # re-enrol as CA-issued: no key, identity from the x5chain
        record = store.devices(conn, [device.device_id])[device.device_id]
        record.public_key_pem = None
        store.save_devices(conn, [record])
    store.close()
    rogue = pki.create_ca(tmp_path / "rogue", "Rogue CA")
    good = _der(_cert(ca, tmp_path / "good", device))
    bad = _der(_cert(rogue, tmp_path / "bad", device))
    topic = wire.device_topic(device.device_id, wire.RESULT)
    observer = Observer(broker.host, broker.port, (topic,)).start()
    with LocalHub(env.settings) as hub:
        nonce = epoch_nonce(hub.workers[0].keys.nonce_secret, 1)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ca-device", protocol=mqtt.MQTTv5)
        client.connect(broker.host, broker.port)
        client.loop_start()
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = wire.FIRMWARE_MEDIA_TYPE
        for chain in (good, bad):
            raw = _evidence(device, chain, nonce=nonce)
            client.publish(wire.device_topic(device.device_id, wire.EVIDENCE), raw, qos=1,
                           properties=props).wait_for_publish(5)
        assert observer.wait(lambda: len(observer.on(topic)) >= 2)
        client.disconnect()
        client.loop_stop()
    observer.stop()
    first, second = (signed_payload(m.payload, env.keys) for m in observer.on(topic)[:2])
    assert first[wire.SUBMODS]["firmware"][wire.EAR_STATUS] == 2 and first[wire.RES_PROBLEMS] == []
    assert second[wire.RES_ACTION] == "none" and "untrusted-chain" in second[wire.RES_PROBLEMS][0]
