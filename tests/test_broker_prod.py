"""broker_config/prod.conf + acl: mutual TLS identities and what each may publish and read."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from hub.crypto import pki

if TYPE_CHECKING:  # the fixture's type; conftest itself is loaded by pytest, not imported
    from tests.conftest import ProdBroker

pytestmark = pytest.mark.broker

TIMEOUT = 10.0
QUIET = 0.7  # how long to wait to be sure that nothing arrives


class TlsClient:
    """An MQTT v5 client over mutual TLS, recording messages and PUBACK reason codes."""

    def __init__(self, prod: ProdBroker, cert: pki.IssuedCert, client_id: str = "") -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.pubacks: dict[int, ReasonCode] = {}
        self._events: queue.Queue[str] = queue.Queue()
        self.mqttc = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.mqttc.tls_set(ca_certs=str(prod.ca.cert_path), certfile=str(cert.cert_path), keyfile=str(cert.key_path))
        self.mqttc.on_connect = self._on_connect
        self.mqttc.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.mqttc.on_subscribe = lambda *_args: self._events.put("suback")
        self.mqttc.on_publish = self._on_publish
        self.mqttc.connect(prod.process.host, prod.process.port, keepalive=30)
        self.mqttc.loop_start()
        assert self._events.get(timeout=TIMEOUT) == "connack"

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        assert not rc.is_failure, rc
        self._events.put("connack")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Properties) -> None:
        self.pubacks[mid] = rc

    def subscribe(self, topic: str) -> None:
        self.mqttc.subscribe(topic, qos=1)
        assert self._events.get(timeout=TIMEOUT) == "suback"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> ReasonCode:
        info = self.mqttc.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while info.mid not in self.pubacks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.pubacks[info.mid]

    def received(self) -> list[tuple[str, bytes]]:
        time.sleep(QUIET)
        out = []
        while not self.messages.empty():
            msg = self.messages.get_nowait()
            out.append((msg.topic, bytes(msg.payload)))
        return out

    def close(self) -> None:
        self.mqttc.disconnect()
        self.mqttc.loop_stop()


Connect = Callable[..., TlsClient]


@pytest.fixture
def clients(prod_broker: ProdBroker) -> Iterator[Connect]:
    """``connect(cn, client_id="")``: a TLS client with a certificate for ``cn`` (issued on first use)."""
    made: list[TlsClient] = []
    certs: dict[str, pki.IssuedCert] = {}

    def connect(cn: str, client_id: str = "") -> TlsClient:
        if cn not in certs:
            issue = pki.issue_hub_cert if cn.startswith(pki.HUB_PREFIX) else pki.issue_device_cert
            certs[cn] = issue(prod_broker.ca, prod_broker.pki_dir, cn)
        client = TlsClient(prod_broker, certs[cn], client_id)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def test_device_publishes_only_its_own_topics(clients: Connect) -> None:
    hub = clients("hub-w1")
    hub.subscribe("$share/hub/fleet/+/evidence")
    hub.subscribe("fleet/+/data")
    dev = clients("dev-1")
    assert not dev.publish("fleet/dev-1/evidence", b"e1").is_failure
    assert not dev.publish("fleet/dev-1/data", b"d1").is_failure
    denied = dev.publish("fleet/dev-2/evidence", b"forged")
    assert denied.value == 0x87  # Not authorized, visible to an MQTT v5 client
    assert dev.publish("fleet/dev-1/result", b"self-verdict").value == 0x87
    assert dev.publish("hub/epoch", b"fake epoch", retain=True).value == 0x87
    assert dev.publish("hub/generation", b"fake checkpoint", retain=True).value == 0x87  # restore detection
    assert sorted(hub.received()) == [("fleet/dev-1/data", b"d1"), ("fleet/dev-1/evidence", b"e1")]


def test_device_reads_its_cmd_epoch_and_manifests_only(clients: Connect) -> None:
    hub = clients("hub-w1")
    for topic in ("fleet/dev-1/cmd", "fleet/dev-2/cmd", "hub/epoch", "hub/manifests/class-a", "fleet/dev-2/result"):
        assert not hub.publish(topic, topic.encode(), retain=True).is_failure
    dev = clients("dev-1")
    for topic in ("fleet/+/cmd", "hub/epoch", "hub/manifests/#", "fleet/+/result", "fleet/dev-2/evidence"):
        dev.subscribe(topic)
    assert sorted(dev.received()) == [
        ("fleet/dev-1/cmd", b"fleet/dev-1/cmd"),
        ("hub/epoch", b"hub/epoch"),
        ("hub/manifests/class-a", b"hub/manifests/class-a"),
    ]


def test_hub_publishes_commands_results_and_hub_topics(clients: Connect) -> None:
    hub = clients("hub-w1")
    for topic in ("fleet/dev-9/cmd", "fleet/dev-9/result", "fleet/dev-9/verified-data", "hub/epoch",
                  "hub/generation"):
        assert not hub.publish(topic, b"x").is_failure, topic
    assert hub.publish("fleet/dev-9/evidence", b"forged by hub").value == 0x87


def test_client_id_cannot_take_over_another_identity(clients: Connect) -> None:
    victim = clients("dev-1")
    victim.subscribe("fleet/dev-1/cmd")
    clients("dev-2", client_id="dev-1")  # use_username_as_clientid: becomes dev-2, dev-1 stays connected
    hub = clients("hub-w1")
    assert not hub.publish("fleet/dev-1/cmd", b"still here").is_failure
    assert victim.received() == [("fleet/dev-1/cmd", b"still here")]
    assert victim.mqttc.is_connected()


def test_unlisted_hub_identity_gets_nothing(clients: Connect) -> None:
    rogue = clients("hub-rogue")  # a valid certificate, but not in the ACL's hub_users
    rogue.subscribe("fleet/+/evidence")
    dev = clients("dev-1")
    assert not dev.publish("fleet/dev-1/evidence", b"e1").is_failure
    assert rogue.publish("fleet/dev-1/cmd", b"x").value == 0x87
    assert rogue.received() == []
