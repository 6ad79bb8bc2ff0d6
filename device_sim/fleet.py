"""Many simulated devices over a few MQTT v5 connections (paho-mqtt 2.x).

Each connection carries a share of the devices: it subscribes (QoS 1) to the retained
epoch ``hub/epoch`` and to every one of its devices' ``fleet/{id}/cmd`` and
``fleet/{id}/result`` (a result naming evidence is its receipt), and publishes
their evidence on ``fleet/{id}/evidence`` (QoS 1, Content Type = the firmware media
type, or the PSA token media type for a ``PsaSimDevice``). paho's network threads
deliver commands to the devices; evidence is published by ``publish_round`` (now) or
by the background loop (``start_publishing``). With ``data=True`` each round also publishes
every device's telemetry batch on ``fleet/{id}/data`` (Content Type = the data media type);
batches a mitm device has intercepted go out altered from a separate MITM connection.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, LogLevel, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from device_sim import keys
from device_sim.commands import Epoch, MessageError, parse_epoch
from device_sim.data_profiles import DataKind, DataOut, DataProfile, alter_record
from device_sim.device import SimDevice
from device_sim.profiles import build_fleet
from device_sim.psa import PsaSimDevice
from hub import wire

__all__ = ["Fleet", "FleetError", "FleetTls", "build_fleet"]

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
    # Set while connected with every subscription granted and the retained commands read; cleared by a
    # disconnect. Telemetry waits for it: after a disconnect (0x98 when the broker changed our rights)
    # nothing is published under rights we no longer know.
    admitted: threading.Event = field(default_factory=threading.Event)
    disconnects: list[tuple[float, int]] = field(default_factory=list)  # (time.monotonic(), reason code)


@dataclass(frozen=True)
class FleetTls:
    """Mutual TLS with per-device certificates: ``device_certs`` maps device id to (cert file, key file)."""

    ca_file: str
    device_certs: Mapping[str, tuple[str, str]]
    mitm_cert: tuple[str, str] | None = None  # the man in the middle's own identity (the ACL denies it others' topics)


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
        resend_backoff: float | None = None,
        max_resends: int = 3,
        data: bool = False,
        tls: FleetTls | None = None,
        max_epoch_age_s: float | None = 600.0,
        clock: Callable[[], float] = time.time,
        reconnect_min_delay: int = 1,
    ) -> None:
        self.host = host
        # refuse an epoch announcement whose iat is older than this (two default periods): a rogue retained copy
        # of an old announcement on an unprotected broker (docs/PROTOCOL.md, "Nonces and epochs")
        self.max_epoch_age_s = max_epoch_age_s
        self.clock = clock
        self.tls = tls  # mutual TLS: one connection per device, client id = device id = certificate CN
        self.port = port
        self.devices = list(devices)
        self.interval = interval
        self.keepalive = keepalive
        self.resend_after = resend_after  # None: never re-send unacknowledged evidence
        self.resend_backoff = resend_backoff  # each re-send waits this factor longer (None: a fixed wait)
        self.max_resends = max_resends
        self.reconnect_min_delay = reconnect_min_delay  # paho's first back-off after losing the connection (s)
        self.hub_key = keys.load_hub_public_key(hub_public_key_pem)
        for device in self.devices:
            device.hub_key = self.hub_key
        self._by_id = {d.device_id: d for d in self.devices}
        if len(self._by_id) != len(self.devices):
            raise ValueError("device ids must be unique")
        prefix = client_id_prefix or f"device-sim-{os.getpid()}"
        self._pubacks: dict[tuple[int, int], int] = {}  # (connection, mid) -> PUBACK reason code
        self._data_mids: dict[str, list[tuple[int, int]]] = {}
        if tls is not None:
            missing = sorted(d.device_id for d in self.devices if d.device_id not in tls.device_certs)
            if missing:
                raise ValueError(f"no certificate for {', '.join(missing[:5])}")
            count = len(self.devices)
            self._connections = [self._make_connection(i, d.device_id) for i, d in enumerate(self.devices)]
        else:
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
        self._last_epoch_rejection: str | None = None
        self._inflight: list[mqtt.MQTTMessageInfo] = []
        self._published = 0
        self._stop_publishing = threading.Event()
        self._publisher: threading.Thread | None = None
        self.data = data  # also publish telemetry batches on fleet/{id}/data (device_sim.telemetry)
        self._published_data = 0
        self._mitm: _Connection | None = None
        if data and any(d.data_profile is DataProfile.MITM for d in self.devices):
            self._mitm = self._make_mitm(f"{prefix}-mitm")

    # --- connection ----------------------------------------------------------------
    def _make_connection(self, index: int, client_id: str) -> _Connection:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        client.suppress_exceptions = True  # a bug in a callback must not kill the network thread
        client.on_log = _log_paho
        conn = _Connection(index, client, {})
        if self.tls is not None:
            cert, key = self.tls.device_certs[client_id]
            client.tls_set(ca_certs=self.tls.ca_file, certfile=cert, keyfile=key)
            client.username_pw_set(client_id)  # the broker takes the username from the certificate anyway
        client.on_publish = lambda c, u, mid, rc, props: self._on_puback(conn, mid, rc)
        client.on_connect = lambda c, u, flags, rc, props: self._on_connect(conn, rc)
        client.on_subscribe = lambda c, u, mid, rcs, props: self._on_subscribe(conn, mid, rcs)
        client.on_message = lambda c, u, msg: self._on_message(conn, msg)
        client.on_disconnect = lambda c, u, flags, rc, props: self._on_disconnect(conn, rc)
        client.reconnect_delay_set(self.reconnect_min_delay, max(self.reconnect_min_delay, 30))
        return conn

    def _on_connect(self, conn: _Connection, rc: ReasonCode) -> None:
        if rc.is_failure:
            conn.failure = f"connection refused: {rc}"
            logger.error("connection %d refused by the broker: %s", conn.index, rc)
            return
        # A device's own result topic carries its receipts: a result names the committed evidence.
        topics = [wire.device_topic(d, leaf) for d in conn.devices for leaf in (wire.COMMAND, wire.RESULT)]
        conn.pending_subs.clear()
        for start in range(0, len(topics), _SUBSCRIBE_CHUNK):
            chunk = [(t, SubscribeOptions(qos=1)) for t in topics[start : start + _SUBSCRIBE_CHUNK]]
            result, mid = conn.client.subscribe(chunk)
            if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                conn.pending_subs.add(mid)
        # The epoch last, in a SUBSCRIBE of its own: the broker sends the retained commands of the
        # subscriptions above before it handles this one, so when its SUBACK arrives every retained
        # command (a quarantine issued while we were away) has been read.
        result, mid = conn.client.subscribe([(wire.EPOCH_TOPIC, SubscribeOptions(qos=1))])
        if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:
            conn.pending_subs.add(mid)

    def _on_disconnect(self, conn: _Connection, rc: ReasonCode) -> None:
        conn.admitted.clear()
        if rc.is_failure:  # 0x98 Administrative action: the broker changed our rights; paho reconnects
            conn.disconnects.append((time.monotonic(), rc.value))
            logger.warning("connection %d disconnected by the broker: %s; reconnecting", conn.index, rc)

    def _make_mitm(self, client_id: str) -> _Connection:
        """The man in the middle: its own connection, forwarding altered batches on devices' data topics."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        client.suppress_exceptions = True
        if self.tls is not None:
            if self.tls.mitm_cert is None:
                raise ValueError("a data-mitm device over mutual TLS needs FleetTls.mitm_cert")
            client.tls_set(ca_certs=self.tls.ca_file, certfile=self.tls.mitm_cert[0], keyfile=self.tls.mitm_cert[1])
        conn = _Connection(-1, client, {})
        client.on_connect = lambda c, u, flags, rc, props: conn.ready.set()
        return conn

    def _on_puback(self, conn: _Connection, mid: int, rc: ReasonCode) -> None:
        with self._lock:
            self._pubacks[(conn.index, mid)] = rc.value

    def _on_subscribe(self, conn: _Connection, mid: int, codes: list[ReasonCode]) -> None:
        refused = [str(c) for c in codes if c.is_failure]
        if refused:
            conn.failure = f"subscription refused: {refused}"
            logger.error("connection %d: %d subscriptions refused: %s", conn.index, len(refused), refused[:3])
        conn.pending_subs.discard(mid)
        if not conn.pending_subs:
            conn.ready.set()
            conn.admitted.set()

    def _on_message(self, conn: _Connection, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:  # a retained message being deleted
            return
        if msg.topic == wire.EPOCH_TOPIC:
            self._on_epoch(bytes(msg.payload))
            return
        parts = msg.topic.split("/")
        if len(parts) == 3 and parts[2] == wire.RESULT and parts[1] in conn.devices:
            conn.devices[parts[1]].handle_result(bytes(msg.payload))
            return
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
                self._last_epoch_rejection = str(exc)
            logger.warning("ignoring an epoch that does not verify: %s", exc)
            return
        with self._lock:
            current = self._epoch
            if current == epoch:
                return
            if self.max_epoch_age_s is not None and epoch.iat < self.clock() - self.max_epoch_age_s:
                self._rejected_epochs += 1
                self._last_epoch_rejection = f"epoch {epoch.epoch_id} announced {self.clock() - epoch.iat:.0f} s ago"
                logger.warning("ignoring epoch %d announced %.0f s ago", epoch.epoch_id, self.clock() - epoch.iat)
                return
            if current is not None and epoch.iat < current.iat:
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
        if self._mitm is not None:
            self._mitm.client.connect(self.host, self.port, keepalive=self.keepalive, clean_start=True)
            self._mitm.client.loop_start()
        deadline = time.monotonic() + timeout
        for conn in self._connections + ([self._mitm] if self._mitm is not None else []):
            if not conn.ready.wait(max(0.0, deadline - time.monotonic())) or conn.failure:
                self.stop()
                raise FleetError(conn.failure or f"connection {conn.index} not ready within {timeout} s")

    def stop(self, flush_timeout: float = 2.0) -> None:
        """Stop publishing, wait briefly for in-flight QoS 1 messages, disconnect."""
        self.stop_publishing()
        self.flush(flush_timeout)
        for conn in self._connections + ([self._mitm] if self._mitm is not None else []):
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
        # a device class with its own evidence format names it (device_sim.tpm); firmware evidence otherwise
        media_type = getattr(device, "evidence_media_type", None)
        props.ContentType = media_type or (
            wire.PSA_MEDIA_TYPE if isinstance(device, PsaSimDevice) else wire.FIRMWARE_MEDIA_TYPE)
        conn = self._connection_of[device.device_id]
        info = conn.client.publish(wire.device_topic(device.device_id, wire.EVIDENCE), raw, qos=1, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            logger.warning("%s: publish queued while disconnected (rc %s)", device.device_id, info.rc)
        with self._lock:
            self._inflight.append(info)
            self._published += 1

    def _publish_data(self, device: SimDevice, out: DataOut) -> None:
        """A batch on ``fleet/{id}/data``: from the device, or altered by the man in the middle."""
        if out.kind is DataKind.INTERCEPTED and self._mitm is not None:
            client, raw = self._mitm.client, alter_record(out.batch.raw)
        elif out.to_broker:
            client, raw = self._connection_of[device.device_id].client, out.batch.raw
        else:
            return
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = wire.DATA_MEDIA_TYPE
        info = client.publish(wire.device_topic(device.device_id, wire.DATA), raw, qos=1, properties=props)
        index = self._mitm.index if self._mitm is not None and client is self._mitm.client else \
            self._connection_of[device.device_id].index
        with self._lock:
            self._data_mids.setdefault(device.device_id, []).append((index, info.mid))
            self._inflight.append(info)
            self._published_data += 1

    def publish_round(self, *, fresh: bool = True) -> int:
        """Every device publishes its due evidence now (none before an epoch nonce is known),
        and, with ``resend_after``, re-sends evidence still without a receipt; with ``data``,
        each device then publishes its telemetry batch. Returns the evidence count.
        With ``fresh=False`` only the re-sends go out."""
        count = 0
        for device in self.devices:
            due = device.evidence_due() if fresh else []
            if self.resend_after is not None:
                due += device.resend_due(self.resend_after, self.max_resends, backoff=self.resend_backoff)
            for raw in due:
                self._publish(device, raw)
                count += 1
        if self.data:
            self.publish_data_round()
        return count

    def publish_device(self, device_id: str) -> int:
        """One device publishes its due evidence now (per-device schedules: device_sim.slow_attacks)."""
        device = self._by_id[device_id]
        due = device.evidence_due()
        for raw in due:
            self._publish(device, raw)
        return len(due)

    def publish_device_data(self, device_id: str) -> int:
        """One device publishes its due telemetry batch now (none while its connection is not admitted)."""
        device = self._by_id[device_id]
        if not self._connection_of[device_id].admitted.is_set():
            return 0
        due = device.data_due()
        for out in due:
            self._publish_data(device, out)
        return len(due)

    def publish_data_round(self) -> int:
        """Every device publishes its due telemetry batch now (and nothing else); returns how many."""
        count = 0
        for device in self.devices:
            if not self._connection_of[device.device_id].admitted.is_set():
                continue  # disconnected or re-reading its commands: its rights are unknown until then
            for out in device.data_due():
                self._publish_data(device, out)
                count += 1
        return count

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every QoS 1 publish so far has been acknowledged by the broker."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                self._inflight = [i for i in self._inflight if not _settled(i)]
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
    def resent(self) -> int:
        """Evidence re-sent for want of a receipt, over all devices."""
        return sum(d.resent for d in self.devices)

    @property
    def published_data(self) -> int:
        """Telemetry batches published (by devices and by the man in the middle)."""
        with self._lock:
            return self._published_data

    def data_reason_codes(self, device_id: str) -> list[int | None]:
        """PUBACK reason codes of the device's data publishes, oldest first (None: not acknowledged yet).

        Under MQTT v5 a publish the broker's ACL denies gets 0x87 (Not authorized)."""
        with self._lock:
            return [self._pubacks.get(ref) for ref in self._data_mids.get(device_id, [])]

    def disconnects(self, device_id: str) -> list[tuple[float, int]]:
        """(time.monotonic(), reason code) of each time the broker ended the connection carrying the device;
        0x98 (Administrative action) is Mosquitto's dynamic-security plugin applying new rights."""
        return list(self._connection_of[device_id].disconnects)

    def admitted(self, device_id: str) -> bool:
        """Whether the device's connection is up, subscribed, and has read its retained commands."""
        return self._connection_of[device_id].admitted.is_set()

    @property
    def rejected_epochs(self) -> int:
        with self._lock:
            return self._rejected_epochs

    @property
    def last_epoch_rejection(self) -> str | None:
        """Why the latest refused epoch announcement was refused (None: none was)."""
        with self._lock:
            return self._last_epoch_rejection

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
            "published_data": self.published_data,
            "devices": [d.report() for d in self.devices],
        }


def _log_paho(client: mqtt.Client, userdata: object, level: int, message: str) -> None:
    """paho's log, at its own levels, except "Client is not connected": paho says it as an error whenever its
    network thread runs between losing a connection and the next attempt (and when a run ends then), while
    ``_on_disconnect`` has already reported the loss and paho reconnects by itself."""
    if message.startswith("Client is not connected"):
        logger.debug("paho: %s", message)
        return
    logger.log(mqtt.LOGGING_LEVEL.get(LogLevel(level), logging.INFO), "%s", message)


def _settled(info: mqtt.MQTTMessageInfo) -> bool:
    """PUBACKed, or published while disconnected (paho's rc says so): nothing more to wait for here;
    evidence without a receipt is re-sent (``resend_after``)."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return True
