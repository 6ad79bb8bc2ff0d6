"""MosquittoProcess: start, QoS 1 round trip, persistence across restart, kill."""

from __future__ import annotations

import queue
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from hub.broker.process import BrokerConfigError, BrokerStartError, MosquittoProcess, free_port, render_template

pytestmark = pytest.mark.broker

TIMEOUT = 10.0


class Client:
    """A paho MQTT v5 client whose received messages land in a queue."""

    def __init__(self, broker: MosquittoProcess, client_id: str) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected: queue.Queue[ReasonCode] = queue.Queue()
        self.subscribed: queue.Queue[int] = queue.Queue()
        self.mqttc = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.mqttc.on_connect = self._on_connect
        self.mqttc.on_message = self._on_message
        self.mqttc.on_subscribe = self._on_subscribe
        self.mqttc.connect(broker.host, broker.port)
        self.mqttc.loop_start()
        assert not self.connected.get(timeout=TIMEOUT).is_failure

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        self.connected.put(rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(msg)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Any) -> None:
        assert not any(rc.is_failure for rc in rcs)
        self.subscribed.put(mid)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.mqttc.subscribe(topic, qos)
        self.subscribed.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.mqttc.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=TIMEOUT)
        assert info.is_published()

    def close(self) -> None:
        self.mqttc.disconnect()
        self.mqttc.loop_stop()


def test_start_accepts_connections(broker: MosquittoProcess) -> None:
    assert broker.running
    assert broker.host == "127.0.0.1"
    with socket.create_connection((broker.host, broker.port), timeout=2):
        pass
    assert broker.config_path.read_text().count(f"listener {broker.port} 127.0.0.1") == 1
    assert "running" in broker.log_path.read_text()


def test_qos1_publish_subscribe(broker: MosquittoProcess) -> None:
    sub = Client(broker, "sub-1")
    pub = Client(broker, "pub-1")
    try:
        sub.subscribe("fleet/dev-1/evidence")
        pub.publish("fleet/dev-1/evidence", b"\xd2\x84hello")
        msg = sub.messages.get(timeout=TIMEOUT)
        assert msg.topic == "fleet/dev-1/evidence"
        assert msg.payload == b"\xd2\x84hello"
        assert msg.qos == 1
    finally:
        sub.close()
        pub.close()


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_restart_keeps_retained_message(broker: MosquittoProcess, kill: bool) -> None:
    port = broker.port
    pub = Client(broker, "pub-retain")
    try:
        pub.publish("hub/epoch", b"epoch-42", retain=True)
    finally:
        pub.close()
    # autosave_on_changes + autosave_interval 1: saved within a second of the change.
    assert _wait_for(lambda: (broker.work_dir / "mosquitto.db").exists())
    if kill:
        time.sleep(1.5)
    broker.restart(kill=kill)
    assert broker.port == port
    sub = Client(broker, "sub-retain")
    try:
        sub.subscribe("hub/epoch")
        msg = sub.messages.get(timeout=TIMEOUT)
        assert msg.payload == b"epoch-42"
        assert msg.retain
    finally:
        sub.close()


def test_kill_stops_the_broker(broker: MosquittoProcess) -> None:
    pid = broker.pid
    assert pid is not None
    broker.kill()
    assert not broker.running
    assert broker.pid is None
    with pytest.raises(OSError), socket.create_connection((broker.host, broker.port), timeout=2):
        pass
    broker.kill()  # idempotent


def test_context_manager_cleans_up() -> None:
    with MosquittoProcess("dev.conf") as proc:
        work_dir = proc.work_dir
        assert proc.running
    assert not proc.running
    assert not work_dir.exists()


def test_startup_failure_reports_log(tmp_path: Path) -> None:
    template = tmp_path / "bad.conf"
    template.write_text("listener {port} 127.0.0.1\nno_such_option 1\n")
    proc = MosquittoProcess(template, tmp_path / "work")
    with pytest.raises(BrokerStartError, match=r"no_such_option|exited"):
        proc.start()
    assert not proc.running


def test_port_in_use_fails_clearly(tmp_path: Path) -> None:
    with MosquittoProcess("dev.conf", tmp_path / "a") as first:
        second = MosquittoProcess("dev.conf", tmp_path / "b", port=first.port, startup_timeout=3)
        with pytest.raises(BrokerStartError):
            second.start()


def test_render_template_rejects_unknown_placeholder() -> None:
    assert render_template("listener {port}", {"port": "1"}) == "listener 1"
    with pytest.raises(BrokerConfigError, match="data_dir"):
        render_template("persistence_location {data_dir}/", {"port": "1"})


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def _wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


SHIPPED_CONFIGS = [*sorted((Path(__file__).resolve().parents[1] / "broker_config").glob("*.conf")),
                   Path(__file__).resolve().parents[1] / "deploy" / "compose" / "mosquitto.conf",
                   Path(__file__).resolve().parents[1] / "bench" / "broker.conf"]


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configurations_cap_the_packet_without_the_deprecated_limit(path: Path) -> None:
    directives = [line.split() for line in path.read_text().splitlines() if line.strip() and
                  not line.lstrip().startswith("#")]
    assert not any(d[0] == "message_size_limit" for d in directives), f"{path}: deprecated since Mosquitto 2.0"
    (limit,) = [int(d[1]) for d in directives if d[0] == "max_packet_size"]
    assert limit >= 64 * 1024 + 1024, "the whole packet: a 64 KiB payload plus headroom for topic and properties"


def test_dev_broker_starts_without_a_deprecation_note_and_caps_packets(broker: MosquittoProcess) -> None:
    assert "message_size_limit" not in broker.stderr_path.read_text()
    received: queue.Queue[int] = queue.Queue()
    reader = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="size-reader", protocol=mqtt.MQTTv5)
    reader.on_message = lambda _c, _u, msg: received.put(len(msg.payload))
    reader.connect(broker.host, broker.port)
    reader.subscribe("size/#", qos=1)
    reader.loop_start()
    try:
        time.sleep(0.3)
        for size in (64 * 1024, 70_000):  # a 64 KiB payload fits with its topic; 70 000 bytes do not
            writer = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"size-writer-{size}", protocol=mqtt.MQTTv5)
            writer.connect(broker.host, broker.port)
            writer.loop_start()
            try:
                writer.publish(f"size/{size}", b"\x00" * size, qos=1)
                if size == 64 * 1024:
                    assert received.get(timeout=5) == size
                else:
                    with pytest.raises(queue.Empty):
                        received.get(timeout=1.0)
            finally:
                writer.disconnect()
                writer.loop_stop()
    finally:
        reader.disconnect()
        reader.loop_stop()
