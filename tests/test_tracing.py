"""One trace id per evidence: in the hub's JSON log record, and in the MQTT v5 user properties of the
result and of the command it caused; a trace id the device sent is kept. Through a real broker."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sim.fleet import Fleet
from hub import wire
from hub.broker.process import MosquittoProcess
from hub.server.localhub import LocalHub
from hub.server.logs import JsonFormatter, configure_logging
from tests.e2e import Observer, Received, make_env


class Records(logging.Handler):
    """Every record of a logger, formatted as the hub's JSON lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def service_log() -> Iterator[Records]:
    logger = logging.getLogger("hub.server.worker")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def trace_of(message: Received) -> str | None:
    pairs = dict(getattr(message.props, "UserProperty", []) or [])
    value = pairs.get("trace-id")
    return str(value) if value is not None else None


def verdict_records(log: Records, device_id: str) -> list[dict[str, Any]]:
    return [r for r in log.lines if r.get("device_id") == device_id and "verdict" in r]


def test_json_lines_keep_the_evidence_fields() -> None:
    record = logging.makeLogRecord({"name": "hub.server.worker", "levelno": logging.INFO, "levelname": "INFO",
                                    "msg": "verdict %s", "args": ("affirming",), "device_id": "d1",
                                    "scheme": "firmware", "verdict": "affirming", "trace_id": "abc"})
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "verdict affirming" and line["level"] == "info" and line["logger"] == "hub.server.worker"
    assert (line["device_id"], line["scheme"], line["verdict"], line["trace_id"]) == ("d1", "firmware",
                                                                                      "affirming", "abc")


def test_json_when_not_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        configure_logging(1)
        logging.getLogger("hub.test").info("hello", extra={"device_id": "d2"})
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert json.loads(stream.getvalue().splitlines()[-1])["device_id"] == "d2"


@pytest.mark.broker
def test_result_command_and_log_share_one_trace_id(broker: MosquittoProcess, tmp_path: Path,
                                                   service_log: Records) -> None:
    env = make_env(broker, tmp_path, 2, "honest:1,tampered:1")
    tampered = next(d for d in env.devices if d.profile.value == "tampered")
    honest = next(d for d in env.devices if d.profile.value == "honest")
    observer = Observer(broker.host, broker.port, ("fleet/+/result", "fleet/+/cmd")).start()
    try:
        with LocalHub(env.settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
            assert fleet.wait_for_epoch(10) is not None
            fleet.publish_round()
            result_topic = wire.device_topic(tampered.device_id, wire.RESULT)
            command_topic = wire.device_topic(tampered.device_id, wire.COMMAND)
            assert observer.wait(lambda: bool(observer.on(result_topic)) and any(
                trace_of(m) for m in observer.on(command_topic)))
            assert observer.wait(lambda: bool(verdict_records(service_log, tampered.device_id)))
            assert observer.wait(lambda: bool(observer.on(wire.device_topic(honest.device_id, wire.RESULT))))
    finally:
        observer.stop()
    (result,) = observer.on(result_topic)
    commands = [m for m in observer.on(command_topic) if trace_of(m)]
    (record,) = verdict_records(service_log, tampered.device_id)
    trace = trace_of(result)
    assert trace and len(trace) >= 16
    assert {trace_of(c) for c in commands} == {trace}, "the quarantine command carries the result's trace id"
    assert record["trace_id"] == trace
    assert (record["scheme"], record["verdict"]) == ("firmware", "contraindicated")
    honest_trace = trace_of(observer.on(wire.device_topic(honest.device_id, wire.RESULT))[0])
    assert honest_trace and honest_trace != trace, "each evidence has its own trace id"


@pytest.mark.broker
def test_a_trace_id_sent_by_the_device_is_kept(broker: MosquittoProcess, tmp_path: Path,
                                               service_log: Records) -> None:
    env = make_env(broker, tmp_path, 1, "honest:1")
    (device,) = env.devices
    observer = Observer(broker.host, broker.port, ("fleet/+/result",)).start()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="trace-sender", protocol=mqtt.MQTTv5)
    try:
        with LocalHub(env.settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
            epoch = fleet.wait_for_epoch(10)
            assert epoch is not None
            client.connect(broker.host, broker.port)
            client.loop_start()
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = wire.FIRMWARE_MEDIA_TYPE
            props.UserProperty = [("trace-id", "from-device-0042")]
            info = client.publish(wire.device_topic(device.device_id, wire.EVIDENCE),
                                  device.make_evidence(epoch.nonce), qos=1, properties=props)
            info.wait_for_publish(5)
            topic = wire.device_topic(device.device_id, wire.RESULT)
            assert observer.wait(lambda: bool(observer.on(topic)))
            deadline = time.monotonic() + 5
            while not verdict_records(service_log, device.device_id) and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
        observer.stop()
    assert trace_of(observer.on(topic)[0]) == "from-device-0042"
    assert verdict_records(service_log, device.device_id)[0]["trace_id"] == "from-device-0042"
