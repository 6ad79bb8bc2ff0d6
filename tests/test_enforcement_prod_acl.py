"""What the production broker (prod.conf + acl, real TLS) refuses before any quarantine: another device's
topics, commands from a device, and clients without a certificate of the fleet CA."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hub import wire
from hub.crypto import pki
from tests import test_broker_prod
from tests.test_broker_prod import Connect

if TYPE_CHECKING:
    from tests.conftest import ProdBroker

pytestmark = pytest.mark.broker
clients = test_broker_prod.clients  # the fixture: TLS clients with certificates issued on first use

NOT_AUTHORIZED = 0x87


def test_device_cannot_publish_on_another_devices_topics_nor_read_its_commands(clients: Connect) -> None:
    hub = clients("hub-w1")
    hub.subscribe("fleet/+/data")
    hub.subscribe("fleet/+/evidence")
    a = clients("dev-a")
    a.subscribe(wire.device_topic("dev-b", wire.COMMAND))
    a.subscribe(wire.device_topic("+", wire.COMMAND))
    for leaf in (wire.EVIDENCE, wire.DATA, wire.RESULT, wire.VERIFIED_DATA):
        assert a.publish(wire.device_topic("dev-b", leaf), b"as dev-b").value == NOT_AUTHORIZED, leaf
    assert not hub.publish(wire.device_topic("dev-b", wire.COMMAND), b"for dev-b only").is_failure
    assert a.received() == []
    assert hub.received() == []


def test_device_cannot_publish_a_command_to_itself_or_another(clients: Connect) -> None:
    b = clients("dev-b")
    b.subscribe(wire.device_topic("dev-b", wire.COMMAND))
    a = clients("dev-a")
    for target in ("dev-a", "dev-b"):
        assert a.publish(wire.device_topic(target, wire.COMMAND), b"release", retain=True).value == NOT_AUTHORIZED
    assert b.received() == []


def _connects(prod: ProdBroker, cert: pki.IssuedCert | None, ca_file: Path) -> bool:
    """Whether a TLS client gets a successful CONNACK within a few seconds."""
    accepted = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(ca_file), certfile=str(cert.cert_path) if cert else None,
                   keyfile=str(cert.key_path) if cert else None)
    client.on_connect = lambda c, u, f, rc, p: accepted.set() if not rc.is_failure else None
    try:
        client.connect(prod.process.host, prod.process.port, keepalive=10)
    except (OSError, ssl.SSLError):
        return False
    client.loop_start()
    try:
        return accepted.wait(3)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def other_ca(tmp_path: Path) -> Iterator[pki.CertificateAuthority]:
    yield pki.create_ca(tmp_path / "other", "Another Fleet CA")


def test_clients_without_a_certificate_or_from_another_ca_cannot_connect(
    prod_broker: ProdBroker, other_ca: pki.CertificateAuthority, tmp_path: Path
) -> None:
    good = pki.issue_device_cert(prod_broker.ca, prod_broker.pki_dir, "dev-a")
    impostor = pki.issue_device_cert(other_ca, tmp_path / "other", "dev-a")
    assert _connects(prod_broker, good, prod_broker.ca.cert_path)  # the check itself can succeed
    assert not _connects(prod_broker, None, prod_broker.ca.cert_path)
    assert not _connects(prod_broker, impostor, prod_broker.ca.cert_path)

