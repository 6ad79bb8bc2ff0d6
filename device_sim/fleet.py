"""Many simulated devices over a few MQTT v5 connections (paho-mqtt 2.x).

Each connection carries a share of the devices: it subscribes (QoS 1) to the retained
epoch ``hub/epoch`` and to every one of its devices' ``fleet/{id}/cmd``, and publishes
their evidence on ``fleet/{id}/evidence`` (QoS 1, Content Type = the firmware media
type). paho's network threads deliver commands to the devices; evidence is published
by ``publish_round`` (now) or by the background loop (``start_publishing``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from device_sim import keys
from device_sim.commands import Epoch, MessageError, parse_epoch
from device_sim.device import SimDevice
from device_sim.profiles import build_fleet
from hub import wire

__all__ = ["Fleet", "FleetError", "build_fleet"]

logger = logging.getLogger(__name__)
_SUBSCRIBE_CHUNK = 200


class FleetError(RuntimeError):
    """The fleet could not connect or subscribe in time."""


@dataclass(eq=False)
class _Connection:
    index: int
    client: mqtt.Client
    devices: dict[str, SimDevice]
    ready: threading.Event = field(default_factory=threading.Event)
    pending_subs: set[int] = field(default_factory=set)
    failure: str | None = None


class Fleet:
    """A simulated fleet on one broker; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        devices: list[SimDevice],
        hub_public_key_pem: bytes,
        interval: float = 2.0,
        connections: int = 4,
        *,
        client_id_prefix: str | None = None,
        keepalive: int = 30,
        resend_after: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.devices = list(devices)
        self.interval = interval
        self.keepalive = keepalive
        self.resend_after = resend_after  # None: never re-send unacknowledged evidence
        self.hub_key = keys.load_hub_public_key(hub_public_key_pem)
        for device in self.devices:
            device.hub_key = self.hub_key
        self._by_id = {d.device_id: d for d in self.devices}
        if len(self._by_id) != len(self.devices):
            raise ValueError("device ids must be unique")
        prefix = client_id_prefix or f"device-sim-{os.getpid()}"
        count = max(1, min(connections, len(self.devices)))
        self._connections = [self._make_connection(i, f"{prefix}-{i}") for i in range(count)]
        self._connection_of: dict[str, _Connection] = {}
        for i, device in enumerate(self.devices):
            conn = self._connections[i % count]
            conn.devices[device.device_id] = device
            self._connection_of[device.device_id] = conn
        self._lock = threading.Lock()
        self._epoch: Epoch | None = None
        self._rejected_epochs = 0
        self._inflight: list[mqtt.MQTTMessageInfo] = []
        self._published = 0
        self._stop_publishing = threading.Event()
        self._publisher: threading.Thread | None = None

    # --- connection ----------------------------------------------------------------
    def _make_connection(self, index: int, client_id: str) -> _Connection:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        client.suppress_exceptions = True  # a bug in a callback must not kill the network thread
        client.enable_logger(logger)
        conn = _Connection(index, client, {})
        client.on_connect = lambda c, u, flags, rc, props: self._on_connect(conn, rc)
        client.on_subscribe = lambda c, u, mid, rcs, props: self._on_subscribe(conn, mid, rcs)
        client.on_message = lambda c, u, msg: self._on_message(conn, msg)
        return conn

    def _on_connect(self, conn: _Connection, rc: ReasonCode) -> None:
        if rc.is_failure:
            conn.failure = f"connection refused: {rc}"
            logger.error("connection %d refused by the broker: %s", conn.index, rc)
            return
        topics = [wire.EPOCH_TOPIC] + [wire.device_topic(d, wire.COMMAND) for d in conn.devices]
        conn.pending_subs.clear()
        for start in range(0, len(topics), _SUBSCRIBE_CHUNK):
            chunk = [(t, SubscribeOptions(qos=1)) for t in topics[start : start + _SUBSCRIBE_CHUNK]]
            result, mid = conn.client.subscribe(chunk)
            if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                conn.pending_subs.add(mid)

    def _on_subscribe(self, conn: _Connection, mid: int, codes: list[ReasonCode]) -> None:
        refused = [str(c) for c in codes if c.is_failure]
        if refused:
            conn.failure = f"subscription refused: {refused}"
            logger.error("connection %d: %d subscriptions refused: %s", conn.index, len(refused), refused[:3])
        conn.pending_subs.discard(mid)
        if not conn.pending_subs:
            conn.ready.set()

    def _on_message(self, conn: _Connection, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:  # a retained message being deleted
            return
        if msg.topic == wire.EPOCH_TOPIC:
            self._on_epoch(bytes(msg.payload))
            return
        parts = msg.topic.split("/")
        device = conn.devices.get(parts[1]) if len(parts) == 3 and parts[2] == wire.COMMAND else None
        if device is None:
            logger.warning("message on unexpected topic %s", msg.topic)
            return
        outcome = device.handle_command(bytes(msg.payload))
        if outcome.accepted:
            logger.info("%s accepted %s", device.device_id, outcome.command)
        else:
            logger.warning("%s rejected a command (%s): %s", device.device_id, outcome.rejection, outcome.detail)
        if outcome.evidence is not None:
            self._publish(device, outcome.evidence)

    def _on_epoch(self, raw: bytes) -> None:
        try:
            epoch = parse_epoch(raw, self.hub_key)
        except MessageError as exc:
            with self._lock:
                self._rejected_epochs += 1
            logger.warning("ignoring an epoch that does not verify: %s", exc)
            return
        with self._lock:
            current = self._epoch
            if current == epoch:
                return
            if current is not None and epoch.epoch_id < current.epoch_id and epoch.iat <= current.iat:
                logger.warning("ignoring an older epoch %d (current %d)", epoch.epoch_id, current.epoch_id)
                return
            self._epoch = epoch
        logger.info("epoch %d", epoch.epoch_id)
        for device in self.devices:
            device.set_epoch(epoch)

    def start(self, timeout: float = 10.0) -> None:
        """Connect every connection and wait until all subscriptions are acknowledged."""
        for conn in self._connections:
            conn.client.connect(self.host, self.port, keepalive=self.keepalive, clean_start=True)
            conn.client.loop_start()
        deadline = time.monotonic() + timeout
        for conn in self._connections:
            if not conn.ready.wait(max(0.0, deadline - time.monotonic())) or conn.failure:
                self.stop()
                raise FleetError(conn.failure or f"connection {conn.index} not ready within {timeout} s")

    def stop(self, flush_timeout: float = 2.0) -> None:
        """Stop publishing, wait briefly for in-flight QoS 1 messages, disconnect."""
        self.stop_publishing()
        self.flush(flush_timeout)
        for conn in self._connections:
            conn.client.disconnect()
            conn.client.loop_stop()

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- publishing ----------------------------------------------------------------
    def _publish(self, device: SimDevice, raw: bytes) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = wire.FIRMWARE_MEDIA_TYPE
        conn = self._connection_of[device.device_id]
        info = conn.client.publish(wire.device_topic(device.device_id, wire.EVIDENCE), raw, qos=1, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            logger.warning("%s: publish queued while disconnected (rc %s)", device.device_id, info.rc)
        with self._lock:
            self._inflight.append(info)
            self._published += 1

    def publish_round(self) -> int:
        """Every device publishes its due evidence now (none before an epoch nonce is known),
        and, with ``resend_after``, re-sends evidence still without a receipt."""
        count = 0
        for device in self.devices:
            due = device.evidence_due()
            if self.resend_after is not None:
                due += device.resend_due(self.resend_after)
            for raw in due:
                self._publish(device, raw)
                count += 1
        return count

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every QoS 1 publish so far has been acknowledged by the broker."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                self._inflight = [i for i in self._inflight if not i.is_published()]
                if not self._inflight:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def start_publishing(self) -> None:
        """Publish a round every ``interval`` seconds on a background thread."""
        if self._publisher is not None:
            return
        self._stop_publishing.clear()
        self._publisher = threading.Thread(target=self._publish_loop, name="device-sim-publisher", daemon=True)
        self._publisher.start()

    def stop_publishing(self) -> None:
        self._stop_publishing.set()
        if self._publisher is not None:
            self._publisher.join()
            self._publisher = None

    def _publish_loop(self) -> None:
        while not self._stop_publishing.is_set():
            self.publish_round()
            self._stop_publishing.wait(self.interval)

    # --- observation ---------------------------------------------------------------
    @property
    def epoch(self) -> Epoch | None:
        with self._lock:
            return self._epoch

    @property
    def published(self) -> int:
        with self._lock:
            return self._published

    @property
    def rejected_epochs(self) -> int:
        with self._lock:
            return self._rejected_epochs

    def device(self, device_id: str) -> SimDevice:
        return self._by_id[device_id]

    def wait_for(self, predicate: Callable[[], bool], timeout: float, poll: float = 0.02) -> bool:
        """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)
        return True

    def wait_for_epoch(self, timeout: float = 10.0) -> Epoch | None:
        self.wait_for(lambda: self.epoch is not None, timeout)
        return self.epoch

    def report(self) -> dict[str, object]:
        epoch = self.epoch
        epoch_json = (
            None if epoch is None else {"epoch_id": epoch.epoch_id, "nonce": epoch.nonce.hex(), "iat": epoch.iat}
        )
        return {
            "broker": f"{self.host}:{self.port}",
            "connections": len(self._connections),
            "epoch": epoch_json,
            "rejected_epochs": self.rejected_epochs,
            "published": self.published,
            "devices": [d.report() for d in self.devices],
        }
