"""MQTT v5 transport on paho-mqtt, with acknowledgement owned by the hub.

Measured (docs/PERFORMANCE.md): paho costs about a third of aiomqtt's CPU per
message, and aiomqtt acknowledges on receipt. Here the session is persistent
(clean start off, a session expiry), acknowledgement is manual and happens
only after the batch's verdicts are committed, and the MQTT v5 Receive
Maximum bounds how many unacknowledged messages the broker may send us: that
is the backpressure, and nothing is dropped inside the hub.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers
from paho.mqtt.reasoncodes import ReasonCode

from hub.envelope import Incoming, Outgoing

log = logging.getLogger(__name__)


class TransportError(RuntimeError):
    """The broker could not be reached or refused us."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    client_id: str
    session_expiry_s: int = 3600
    receive_maximum: int = 1024
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    username: str | None = None


class _PublishProperties(Properties):
    """PUBLISH properties whose encoding is computed once. paho's ``Properties`` validates every
    attribute set and re-encodes generically at each ``pack`` (about 60 µs per message together);
    ``publish_properties`` sets the attributes directly and keeps their MQTT v5 encoding."""

    def pack(self) -> bytes:
        packed = self.__dict__.get("_packed")
        return packed if isinstance(packed, bytes) else bytes(super().pack())  # type: ignore[no-untyped-call]


def _has_puback(info: mqtt.MQTTMessageInfo) -> bool:
    """paho's own record of the PUBACK. ``is_published`` raises for a message published while the
    connection was down (rc NO_CONN), yet paho keeps that message queued, sends it on the resumed
    session and marks it published when its PUBACK comes; so the record is read directly."""
    if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
        return False  # never queued (the queue is unbounded here: max_queued_messages 0)
    with info._condition:
        return bool(info._published)


def _utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError("MQTT string longer than 65,535 bytes")
    return len(data).to_bytes(2, "big") + data


def send_without_delay(_client: mqtt.Client, _userdata: object, sock: object) -> None:
    """paho's ``on_socket_open``: turn off Nagle's algorithm (TCP_NODELAY, RFC 896; RFC 1122 §4.2.3.4) on the
    broker connection.

    With it on, a small write that follows one the broker has not yet acknowledged waits for that ACK, and
    the broker's kernel delays a lone ACK (40 ms at least on Linux) when it has nothing to send back: a
    result and its quarantine command published after a quiet spell arrived ~40 ms late (the last
    evidence of the bench's 200/s phase: 44-48 ms instead of ~12, docs/SCALING.md). paho leaves the option off; the
    broker's side is ``set_tcp_nodelay true`` (broker_config/). TLS sockets pass the option to their TCP
    socket; a socket that is not TCP (a Unix socket) is left as it is."""
    setsockopt = getattr(sock, "setsockopt", None)
    if setsockopt is None:
        return
    with contextlib.suppress(OSError):
        setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def publish_properties(prototype: _PublishProperties, content_type: str | None, trace_id: str | None) -> Properties:
    """Content Type and a ``trace-id`` User Property, encoded as ``Properties.pack`` would (ids 3 and 38,
    in that order, behind the variable-length total)."""
    props = copy.copy(prototype)  # the parent's name and type tables are shared; paho never changes them
    body = b""
    if content_type:
        body += b"\x03" + _utf8(content_type)
        object.__setattr__(props, "ContentType", content_type)
    if trace_id:
        body += b"\x26" + _utf8("trace-id") + _utf8(trace_id)
        object.__setattr__(props, "UserProperty", [("trace-id", trace_id)])
    object.__setattr__(props, "_packed", VariableByteIntegers.encode(len(body)) + body)  # type: ignore[no-untyped-call]
    return props


class MqttTransport:
    def __init__(self, address: BrokerAddress, subscriptions: Sequence[tuple[str, int]],
                 on_network_thread: Callable[[], object] | None = None) -> None:
        """``on_network_thread`` is called on paho's network thread at each connection (the worker names the
        thread for the OS with it)."""
        self.address = address
        self._on_network_thread = on_network_thread
        self._publish_prototype = _PublishProperties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.subscriptions = list(subscriptions)
        self.inbox: queue.Queue[Incoming] = queue.Queue()
        self._routes: dict[str, Callable[[bytes], None]] = {}
        self.connected = threading.Event()
        self.last_error = ""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=address.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if address.tls_ca:
            client.tls_set(
                ca_certs=address.tls_ca,
                certfile=address.tls_cert or None,
                keyfile=address.tls_key or None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if address.username:
            client.username_pw_set(address.username)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(1000)
        client.on_socket_open = send_without_delay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.reconnect_delay_set(1, 5)
        self._pending_subscribe: int | None = None
        self._pending_unsubscribe: int | None = None
        self._resume_only = False
        self.client = client

    def route(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Hand messages on ``topic`` (an exact name, subscribed at QoS 0) to ``handler`` on paho's network
        thread instead of the inbox: replies of the broker's control interface (hub/broker/dynsec.py).
        Call before ``start``."""
        self._routes[topic] = handler
        self.subscriptions.append((topic, 0))

    def start(self, timeout: float = 10.0, *, resume_only: bool = False) -> None:
        """Connect (clean start off, the session kept ``session_expiry_s``) and subscribe; returns once the
        broker granted the subscriptions. ``resume_only`` (a retiring identity): resume the session and
        unsubscribe instead, so the broker adds no new message for this identity (MQTT 5 §3.10.4) and the
        members left in the shared subscription take all of the live traffic, while the messages already
        queued in the session are still delivered here (Mosquitto does; the standard says it MAY).
        Raises ``TransportError`` if there is no connection within ``timeout`` seconds."""
        self._resume_only = resume_only
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.address.session_expiry_s
        props.ReceiveMaximum = self.address.receive_maximum
        try:
            self.client.connect_async(self.address.host, self.address.port, keepalive=30, clean_start=False,
                                      properties=props)
        except (OSError, ValueError) as exc:
            raise TransportError(f"cannot connect to {self.address.host}:{self.address.port}: {exc}") from exc
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.client.loop_stop()
            raise TransportError(
                f"no connection to the broker at {self.address.host}:{self.address.port} within {timeout:.0f}s"
                + (f" ({self.last_error})" if self.last_error else "")
            )

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def next_batch(self, max_items: int, wait_s: float, idle_s: float = 0.2) -> list[Incoming]:
        """Block up to ``idle_s`` for a first message, then gather more for up to ``wait_s``."""
        try:
            first = self.inbox.get(timeout=idle_s)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + wait_s
        while len(batch) < max_items:
            try:
                batch.append(self.inbox.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self.inbox.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def publish_all(self, messages: Sequence[Outgoing], timeout: float = 10.0) -> bool:
        """Publish at QoS 1 and wait for every PUBACK; False if any did not arrive in time."""
        return self.wait_published(self.publish(messages), timeout)

    def publish(self, messages: Sequence[Outgoing]) -> list[mqtt.MQTTMessageInfo]:
        """Publish at QoS 1 without waiting; ``published``/``wait_published`` tell when the broker has them.
        paho keeps each message until its PUBACK, and sends it again on a resumed session."""
        infos = []
        for out in messages:
            props = publish_properties(self._publish_prototype, out.content_type, out.trace_id)
            infos.append(self.client.publish(out.topic, out.payload, qos=1, retain=out.retain, properties=props))
        return infos

    @staticmethod
    def published(infos: Sequence[mqtt.MQTTMessageInfo]) -> bool:
        """Every message has its PUBACK (no waiting)."""
        return all(_has_puback(info) for info in infos)

    def wait_published(self, infos: Sequence[mqtt.MQTTMessageInfo], timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every PUBACK; False if any is still missing."""
        deadline = time.monotonic() + timeout
        for info in infos:
            while not _has_puback(info):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                with info._condition:  # paho notifies this condition when the PUBACK arrives
                    if not info._published:
                        info._condition.wait(min(remaining, 0.1))
        return True

    def end_session(self, timeout: float = 10.0) -> bool:
        """Retire this identity: unsubscribe everything and disconnect with session expiry 0, so the broker
        deletes the session and queues nothing more for it (MQTT 5 §3.14.2.2.2). False if the broker did not
        confirm the unsubscribe in time (the session then still ends at the disconnect)."""
        done = threading.Event()
        result, mid = self.client.unsubscribe([topic for topic, _qos in self.subscriptions])
        confirmed = False
        if result == mqtt.MQTT_ERR_SUCCESS:
            previous = self.client.on_unsubscribe

            def on_unsubscribe(_c: mqtt.Client, _u: object, got: int, *_rest: object) -> None:
                if got == mid:
                    done.set()

            self.client.on_unsubscribe = on_unsubscribe
            confirmed = done.wait(timeout)
            self.client.on_unsubscribe = previous
        props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
        self.client.disconnect(properties=props)
        self.client.loop_stop()
        return confirmed

    def ack(self, messages: Sequence[Incoming]) -> None:
        for message in messages:
            if message.qos > 0:
                self.client.ack(message.token, message.qos)

    # --- paho callbacks (network thread) ---------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: object, reason: object,
                    _props: object) -> None:
        if self._on_network_thread is not None:
            self._on_network_thread()
        if getattr(reason, "is_failure", False):
            self.last_error = f"connection refused: {reason}"
            log.error("broker refused the connection: %s", reason)
            return
        if self._resume_only and self.subscriptions:
            _result, self._pending_unsubscribe = client.unsubscribe([topic for topic, _qos in self.subscriptions])
            return
        if self.subscriptions:
            # "connected" only once the broker has granted the subscriptions: evidence published
            # before that would find no subscriber on a session's first connection.
            _result, self._pending_subscribe = client.subscribe([(topic, qos) for topic, qos in self.subscriptions])
            return
        self.connected.set()
        log.info("connected to broker", extra={"client_id": self.address.client_id})

    def _on_subscribe(self, _client: mqtt.Client, _userdata: object, mid: int, reason_codes: list[ReasonCode],
                      _props: Properties) -> None:
        if mid != self._pending_subscribe:
            return
        refused = [str(code) for code in reason_codes if getattr(code, "is_failure", False)]
        if refused:
            self.last_error = f"subscriptions refused: {refused}"
            log.error("broker refused subscriptions: %s", refused)
            return
        self.connected.set()
        log.info("connected to broker and subscribed", extra={"client_id": self.address.client_id})

    def _on_unsubscribe(self, _client: mqtt.Client, _userdata: object, mid: int, _reason_codes: object,
                        _props: object) -> None:
        if mid == self._pending_unsubscribe:
            self.connected.set()
            log.info("resumed the session and unsubscribed: draining what it holds",
                     extra={"client_id": self.address.client_id})

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: object, reason: object,
                       _props: object) -> None:
        self.connected.clear()
        if getattr(reason, "is_failure", True):
            self.last_error = f"disconnected: {reason}"
            log.warning("disconnected from broker: %s", reason)
        else:
            log.info("disconnected from broker")

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        handler = self._routes.get(message.topic)
        if handler is not None:
            handler(bytes(message.payload))
            if message.qos > 0:
                self.client.ack(message.mid, message.qos)
            return
        props = getattr(message, "properties", None)
        content_type = getattr(props, "ContentType", None) if props is not None else None
        trace_id = None
        for key, value in (getattr(props, "UserProperty", None) or []) if props is not None else []:
            if key == "trace-id" and isinstance(value, str) and len(value) <= 64:
                trace_id = value
        self.inbox.put(Incoming(message.topic, bytes(message.payload), content_type, trace_id, message.mid,
                                message.qos, time.monotonic(), redelivered=bool(message.dup)))
