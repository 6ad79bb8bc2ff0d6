"""The simulated fleet through a real Mosquitto, with the test playing the hub.

The broker is started here (its own tiny config on a free loopback port) so this
file does not depend on the shared fixtures. Hub-side messages are signed with
device_sim's encoder, which test_sim_cose checks against cbor2 + cryptography and pycose.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from device_sim import Fleet, Rejection, build_fleet, cose, keys
from device_sim.cli import main
from hub import wire

pytestmark = pytest.mark.broker
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def sim_broker(tmp_path: Path) -> Iterator[int]:
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mosquitto did not start: {(tmp_path / 'mosquitto.log').read_text()}")
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@dataclass
class FakeHub:
    """Signs epochs and commands and collects the evidence the fleet publishes."""

    port: int
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    evidence: list[tuple[str, bytes, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="fake-hub", protocol=MQTTProtocolVersion.MQTTv5
        )
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        self.client.subscribe("fleet/+/evidence", qos=1)
        assert subscribed.wait(5)

    @property
    def pem(self) -> bytes:
        return keys.public_key_pem(self.key.public_key())

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        content_type = getattr(msg.properties, "ContentType", None)
        with self.lock:
            self.evidence.append((msg.topic, bytes(msg.payload), content_type))

    def received(self) -> list[tuple[str, bytes, str | None]]:
        with self.lock:
            return list(self.evidence)

    def publish(
        self,
        topic: str,
        payload: dict[int, object],
        *,
        key: ec.EllipticCurvePrivateKey | None = None,
        retain: bool = False,
    ) -> None:
        raw = cose.sign1(cbor2.dumps(payload), key or self.key, b"hub")
        self.client.publish(topic, raw, qos=1, retain=retain).wait_for_publish(5)

    def epoch(self, epoch_id: int, nonce: bytes, *, key: ec.EllipticCurvePrivateKey | None = None) -> None:
        payload = {265: wire.EPOCH_PROFILE, 6: int(time.time()), -65560: epoch_id, 10: nonce}
        self.publish(wire.EPOCH_TOPIC, payload, key=key, retain=True)

    def command(
        self,
        device_id: str,
        kind: str,
        seq: int,
        *,
        key: ec.EllipticCurvePrivateKey | None = None,
        retain: bool = False,
        extra: dict[int, object] | None = None,
    ) -> None:
        payload = {
            2: device_id,
            6: int(time.time()),
            4: int(time.time()) + 60,
            -65550: kind,
            -65551: seq,
            **(extra or {}),
        }
        self.publish(wire.device_topic(device_id, wire.COMMAND), payload, key=key, retain=retain)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def hub(sim_broker: int) -> Iterator[FakeHub]:
    fake = FakeHub(sim_broker)
    try:
        yield fake
    finally:
        fake.close()


def _claims(raw: bytes) -> dict[int, object]:
    return dict(cbor2.loads(cbor2.loads(raw).value[2]))


def wait(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_fleet_attests_with_the_epoch_nonce_and_obeys_only_signed_commands(hub: FakeHub) -> None:
    epoch_nonce = b"E" + bytes(range(31))
    hub.epoch(1, epoch_nonce)
    devices = build_fleet(4, "honest:1", "mqtt-test")
    fleet = Fleet("127.0.0.1", hub.port, devices, hub.pem, connections=2)
    fleet.start()
    try:
        epoch = fleet.wait_for_epoch(5)
        assert epoch is not None and epoch.nonce == epoch_nonce
        assert fleet.publish_round() == 4 and fleet.flush(5)
        assert wait(lambda: len(hub.received()) == 4)
        for topic, raw, content_type in hub.received():
            assert content_type == wire.FIRMWARE_MEDIA_TYPE
            device_id = topic.split("/")[1]
            assert topic == f"fleet/{device_id}/evidence"
            assert cbor2.loads(cbor2.loads(raw).value[0])[4] == device_id.encode()
            assert _claims(raw)[10] == epoch_nonce

        target, bystander, challenged = devices[0], devices[1], devices[2]
        hub.command(target.device_id, "quarantine", 1, retain=True)
        assert fleet.wait_for(lambda: target.quarantined, 5)

        mallory = ec.generate_private_key(ec.SECP256R1())
        hub.command(bystander.device_id, "quarantine", 1, key=mallory)
        assert fleet.wait_for(lambda: len(bystander.command_log) == 1, 5)
        assert bystander.command_log[0].rejection is Rejection.FORGED and not bystander.quarantined

        challenge = b"C" + bytes(31)
        hub.command(challenged.device_id, "challenge", 1, extra={10: challenge})
        assert wait(lambda: any(_claims(raw)[10] == challenge for _, raw, _ in hub.received()))

        hub.epoch(2, b"X" * 32, key=mallory)  # a forged epoch is ignored
        assert fleet.wait_for(lambda: fleet.rejected_epochs >= 1, 5)
        assert fleet.epoch == epoch

        hub.epoch(3, b"E" * 32)
        assert fleet.wait_for(lambda: fleet.epoch is not None and fleet.epoch.epoch_id == 3, 5)
        fleet.interval = 0.05
        fleet.start_publishing()
        assert wait(lambda: sum(_claims(raw)[10] == b"E" * 32 for _, raw, _ in hub.received()) >= 8)
    finally:
        fleet.stop()
    report = fleet.report()
    assert json.loads(json.dumps(report))["devices"][0]["quarantined"] is True

    # A restarted fleet gets the retained quarantine once, on subscribe.
    again = build_fleet(4, "honest:1", "mqtt-test")
    with Fleet("127.0.0.1", hub.port, again, hub.pem, connections=1) as fleet2:
        assert fleet2.wait_for(lambda: again[0].quarantined, 5)
        assert [c.accepted for c in again[0].command_log] == [True]
        assert not any(d.quarantined for d in again[1:])


def test_cli_run_writes_a_report(hub: FakeHub, tmp_path: Path) -> None:
    hub.epoch(1, b"E" * 32)
    hub_key = tmp_path / "hub.pem"
    hub_key.write_bytes(hub.pem)
    report = tmp_path / "report.json"
    args = ["run", "--port", str(hub.port), "--devices", "6", "--profile", "demo", "--hub-key", str(hub_key)]
    args += ["--interval", "0.2", "--duration", "1.5", "--report", str(report), "--bootcount", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert len(doc["devices"]) == 6 and doc["published"] >= 6
    assert all(d["evidence"] and d["bootcount"] == 3 for d in doc["devices"])
    assert wait(lambda: len(hub.received()) >= doc["published"])


def test_cli_enrol_and_images(tmp_path: Path) -> None:
    out = tmp_path / "enrol.json"
    result = CliRunner().invoke(main, ["enrol", "--devices", "5", "--seed", "s", "--out", str(out)])
    assert result.exit_code == 0, result.output
    entries = json.loads(out.read_text())["devices"]
    assert [e["device_id"] for e in entries][:2] == ["env-sensor-0001", "smart-meter-0001"]
    assert entries[0]["public_key_pem"] == keys.public_key_pem(keys.device_private_key("s", "env-sensor-0001")).decode()
    result = CliRunner().invoke(main, ["images", "--out", str(tmp_path / "img")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "img" / "env-sensor" / "1.0.0" / "app.bin").stat().st_size == 4096
    bad = CliRunner().invoke(main, ["enrol", "--profile", "nonsense:1", "--out", str(out)])
    assert bad.exit_code != 0


def test_cli_refuses_bad_input_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    key = tmp_path / "hub.pem"
    key.write_bytes(keys.public_key_pem(ec.generate_private_key(ec.SECP256R1()).public_key()))
    run = ["run", "--devices", "2", "--hub-key", str(key)]
    cases = [
        (["enrol", "--devices", "3", "--out", str(tmp_path / "nonexistent" / "x.json")], "--out"),
        (["images", "--out", str(key / "img")], "--out"),
        ([*run, "--port", "0"], "--port"),
        ([*run, "--port", "65536"], "--port"),
        ([*run, "--duration", "-1"], "--duration"),
        ([*run, "--bootcount", "-1"], "--bootcount"),
        ([*run, "--resend-after", "0"], "--resend-after"),
        ([*run, "--report", str(tmp_path / "nonexistent" / "r.json")], "--report"),
    ]
    for args, option in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
        assert option in result.output, (args, result.output)


def test_cli_run_fails_when_no_epoch_verifies_with_the_hub_key(hub: FakeHub, tmp_path: Path) -> None:
    hub.epoch(1, b"E" * 32)
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(keys.public_key_pem(ec.generate_private_key(ec.SECP256R1()).public_key()))
    args = ["run", "--port", str(hub.port), "--devices", "2", "--interval", "0.2", "--duration", "1"]
    result = CliRunner().invoke(main, [*args, "--hub-key", str(wrong)])
    assert result.exit_code == 1, result.output
    assert "no epoch announcement verified" in result.output and str(wrong) in result.output
    assert hub.received() == []


def test_cli_run_fails_when_no_epoch_arrives(sim_broker: int, tmp_path: Path) -> None:
    key = tmp_path / "hub.pem"
    key.write_bytes(keys.public_key_pem(ec.generate_private_key(ec.SECP256R1()).public_key()))
    args = ["run", "--port", str(sim_broker), "--devices", "2", "--duration", "0.5", "--hub-key", str(key)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "no epoch announcement arrived" in result.output


def test_cli_run_summary_keeps_whole_device_ids_off_a_terminal(hub: FakeHub, tmp_path: Path) -> None:
    hub.epoch(1, b"E" * 32)
    key = tmp_path / "hub.pem"
    key.write_bytes(hub.pem)
    args = ["run", "--port", str(hub.port), "--devices", "4", "--profile", "data", "--hub-key", str(key),
            "--interval", "0.2", "--duration", "1"]
    result = CliRunner(env={"COLUMNS": "60"}).invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    for device in build_fleet(4, "data"):
        assert device.device_id in result.output



def test_fleet_stopped_while_reconnecting_logs_no_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A run that ends while a connection is down (the broker restarting) ends quietly: paho's network thread
    finding no socket then is its shutdown, not a fault."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait(lambda: _accepts(port), 10)
        key = keys.public_key_pem(ec.generate_private_key(ec.SECP256R1()).public_key())
        fleet = Fleet("127.0.0.1", port, build_fleet(4, "honest:1", "stop-test"), key, connections=2)
        fleet.start()
    finally:
        proc.terminate()
        proc.wait(10)
    caplog.set_level(logging.DEBUG, logger="device_sim")
    time.sleep(1.5)  # paho notices the lost connection and tries to reconnect (1 s back-off)
    fleet.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
