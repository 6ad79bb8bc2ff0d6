"""hub.crypto.pki and the `pki` CLI: chains verify, unsafe names refused, key modes, and mutual TLS with Mosquitto."""

from __future__ import annotations

import json
import os
import queue
import ssl
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from hub.cli.pki import pki as pki_cli
from hub.crypto import pki

if TYPE_CHECKING:  # the fixture's type; conftest itself is loaded by pytest, not imported
    from tests.conftest import ProdBroker

UNSAFE_DEVICE_IDS = [
    "",
    "ünïcødé-1",  # outside the device id alphabet (ASCII letters, digits, '.', '_', '-')
    "a%u",
    "x" * 65,
    "a/b",
    "dev+1",
    "dev#",
    "$SYS",
    "hub-w1",
    "HUB-w1",
    "dev 1",
    "dev\t1",
    "dev\n1",
    "dev\x00",
    "dev\x7f",
    "dev\u202e1",  # right-to-left override
    "dev\u200b1",  # zero-width space
    "dev\u00a01",  # no-break space
]


@pytest.fixture
def ca(tmp_path: Path) -> pki.CertificateAuthority:
    return pki.create_ca(tmp_path / "ca")


def _cn(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_is_a_self_signed_p256_ca(ca: pki.CertificateAuthority) -> None:
    cert = ca.certificate
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    pki.verify_issued_by(cert, cert)
    assert pki.load_ca(ca.cert_path.parent).certificate == cert


def test_chains_verify(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    server = pki.issue_server_cert(ca, tmp_path / "out")
    hub = pki.issue_hub_cert(ca, tmp_path / "out", "w1")
    device = pki.issue_device_cert(ca, tmp_path / "out", "dev-0001")
    assert (_cn(server.certificate), _cn(hub.certificate), _cn(device.certificate)) == (
        "localhost",
        "hub-w1",
        "dev-0001",
    )
    assert hub.cert_path.name == "hub-w1.crt" and device.key_path.name == "dev-0001.key"
    for issued in (server, hub, device):
        pki.verify_issued_by(issued.certificate, ca.certificate)
        assert x509.load_pem_x509_certificate(issued.cert_path.read_bytes()) == issued.certificate
    # The strict path builder of `cryptography` accepts the server certificate for localhost.
    # (Its client verifier insists on a SAN; Mosquitto takes the identity from the CN, so clients have none.)
    store = Store([ca.certificate])
    PolicyBuilder().store(store).build_server_verifier(x509.DNSName("localhost")).verify(server.certificate, [])
    for client in (hub, device):
        eku = client.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    san = server.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_certificate_from_another_ca_does_not_verify(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    other = pki.create_ca(tmp_path / "other", "Other CA")
    device = pki.issue_device_cert(other, tmp_path / "out", "dev-1")
    with pytest.raises(pki.PkiError, match="not issued by this CA"):
        pki.verify_issued_by(device.certificate, ca.certificate)


@pytest.mark.parametrize("device_id", UNSAFE_DEVICE_IDS)
def test_unsafe_device_ids_refused(ca: pki.CertificateAuthority, tmp_path: Path, device_id: str) -> None:
    with pytest.raises(pki.PkiError):
        pki.validate_device_id(device_id)
    with pytest.raises(pki.PkiError):
        pki.issue_device_cert(ca, tmp_path / "out", device_id)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("device_id", ["dev-1", "x" * 64, "sensor_07.line-3", "hub", "Sensor.A_1"])
def test_safe_device_ids_accepted(device_id: str) -> None:
    assert pki.validate_device_id(device_id) == device_id


@pytest.mark.parametrize("name", ["", "hub-", "w/1", "w+", "x" * 61, "w 1"])
def test_unsafe_hub_names_refused(ca: pki.CertificateAuthority, tmp_path: Path, name: str) -> None:
    with pytest.raises(pki.PkiError):
        pki.issue_hub_cert(ca, tmp_path, name)


def test_private_keys_are_0600_and_not_overwritten(ca: pki.CertificateAuthority, tmp_path: Path) -> None:
    out = tmp_path / "out"
    device = pki.issue_device_cert(ca, out, "dev-1")
    server = pki.issue_server_cert(ca, out)
    for key_path in (ca.key_path, device.key_path, server.key_path):
        assert _mode(key_path) == 0o600
    assert _mode(device.cert_path) & 0o077 != 0o077  # certificates are public; only keys are private
    with pytest.raises(pki.PkiError, match="exists"):
        pki.issue_device_cert(ca, out, "dev-1")
    device.key_path.chmod(0o644)  # a loosened old key is replaced by a new file, never reused
    again = pki.issue_device_cert(ca, out, "dev-1", overwrite=True)
    assert _mode(again.key_path) == 0o600
    assert again.certificate != device.certificate


def test_keys_are_0600_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ca = pki.create_ca(tmp_path / "ca")
    finally:
        os.umask(old)
    assert _mode(ca.key_path) == 0o600


def test_load_ca_errors(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    with pytest.raises(pki.PkiError, match="init-ca"):
        pki.load_ca(tmp_path / "missing")
    other = pki.create_ca(tmp_path / "other")
    ca.key_path.unlink()
    ca.key_path.write_bytes(other.key_path.read_bytes())
    with pytest.raises(pki.PkiError, match="not the EC private key"):
        pki.load_ca(ca.cert_path.parent)


def test_cli_issues_everything_as_json(tmp_path: Path) -> None:
    runner = CliRunner()
    d = str(tmp_path / "ca")
    outputs = []
    for args in (
        ["init-ca", "--dir", d],
        ["server", "--dir", d, "--dns", "localhost", "--dns", "broker.local", "--ip", "127.0.0.1"],
        ["hub", "--dir", d, "--cn", "w1"],
        ["device", "--dir", d, "--cn", "dev-1", "--out", str(tmp_path / "devices")],
    ):
        result = runner.invoke(pki_cli, [*args, "--json"])
        assert result.exit_code == 0, result.output
        outputs.append(json.loads(result.output))
    assert [o["common_name"] for o in outputs[1:]] == ["localhost", "hub-w1", "dev-1"]
    assert outputs[3]["cert"] == str(tmp_path / "devices" / "dev-1.crt")
    for o in outputs:
        assert Path(o["cert"]).is_file() and _mode(Path(o["key"])) == 0o600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["device", "--cn", "a/b"], "slash"),
        (["device", "--cn", "hub-x"], "reserved for hub"),
        (["hub", "--cn", "x#"], "wildcard"),
        (["server", "--ip", "not-an-ip"], "not an IP"),
    ],
)
def test_cli_errors_exit_non_zero(tmp_path: Path, args: list[str], message: str) -> None:
    runner = CliRunner()
    d = str(tmp_path / "ca")
    assert runner.invoke(pki_cli, ["init-ca", "--dir", d]).exit_code == 0
    result = runner.invoke(pki_cli, [*args, "--dir", d])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_without_ca_explains(tmp_path: Path) -> None:
    result = CliRunner().invoke(pki_cli, ["device", "--dir", str(tmp_path / "none"), "--cn", "dev-1"])
    assert result.exit_code == 1
    assert "init-ca" in result.output


def tls_connect(prod: ProdBroker, cert: pki.IssuedCert | None, timeout: float = 5.0) -> bool:
    """Whether an MQTT v5 client with ``cert`` (or none) completes CONNECT over TLS."""
    outcome: queue.Queue[bool] = queue.Queue()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        outcome.put(not rc.is_failure)

    def on_disconnect(client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        outcome.put(False)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.tls_set(
        ca_certs=str(prod.ca.cert_path),
        certfile=str(cert.cert_path) if cert else None,
        keyfile=str(cert.key_path) if cert else None,
    )
    try:
        client.connect(prod.process.host, prod.process.port, keepalive=10)
    except (OSError, ssl.SSLError):
        return False
    client.loop_start()
    try:
        return outcome.get(timeout=timeout)
    except queue.Empty:
        return False
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.broker
def test_mosquitto_accepts_device_cert_only_from_its_ca(prod_broker: ProdBroker, tmp_path: Path) -> None:
    device = pki.issue_device_cert(prod_broker.ca, prod_broker.pki_dir, "dev-1")
    assert tls_connect(prod_broker, device)
    assert not tls_connect(prod_broker, None)
    other_ca = pki.create_ca(tmp_path / "other", "Other CA")
    impostor = pki.issue_device_cert(other_ca, tmp_path / "other", "dev-1")
    assert not tls_connect(prod_broker, impostor)
    log = prod_broker.process.log_path.read_text()
    assert "u'dev-1'" in log  # the certificate CN became the username (use_identity_as_username)
