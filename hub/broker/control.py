"""Request and answer over the broker's control topic (Mosquitto's ``$CONTROL/dynamic-security/v1``).

Commands are published as ``{"commands": [...]}``, each with a ``correlationData`` of its own; the plugin
answers on ``$CONTROL/dynamic-security/v1/response`` to every subscribed admin, and each answer carries the
``correlationData`` of its command, so several hub workers can drive the plugin at once. Two ways to send:
a hub worker's own connection (``TransportExecutor``) or a connection per call (``ConnectionExecutor``).

Exceptions::

    EnforcementError   no connection, a refused subscription, or no answer in time
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hub.broker.enforcement import EnforcementError
from hub.broker.transport import BrokerAddress, MqttTransport, send_without_delay
from hub.envelope import Outgoing

__all__ = ["CONTROL_TOPIC", "RESPONSE_TOPIC", "Command", "ConnectionExecutor", "Correlator", "Executor",
           "TransportExecutor"]

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"

Command = dict[str, Any]
Executor = Callable[[Sequence[Command]], list[Command]]


class Correlator:
    """Matches answers on the response topic to waiting commands by their ``correlationData``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, queue.Queue[Command]] = {}

    def prepare(self, commands: Sequence[Command]) -> tuple[bytes, list[str], queue.Queue[Command]]:
        answers: queue.Queue[Command] = queue.Queue()
        ids = [uuid.uuid4().hex for _ in commands]
        with self._lock:
            for cid in ids:
                self._waiting[cid] = answers
        body = {"commands": [{**cmd, "correlationData": cid} for cmd, cid in zip(commands, ids, strict=True)]}
        return json.dumps(body, separators=(",", ":")).encode(), ids, answers

    def on_response(self, payload: bytes) -> None:
        try:
            responses = json.loads(payload).get("responses", [])
        except (ValueError, AttributeError):
            log.warning("unreadable dynamic-security response ignored")
            return
        for response in responses if isinstance(responses, list) else []:
            cid = response.get("correlationData") if isinstance(response, dict) else None
            with self._lock:
                answers = self._waiting.pop(cid, None) if isinstance(cid, str) else None
            if answers is not None:
                answers.put(response)

    def collect(self, ids: list[str], answers: queue.Queue[Command], timeout: float) -> list[Command]:
        got: dict[str, Command] = {}
        try:
            while len(got) < len(ids):
                response = answers.get(timeout=timeout)
                got[response["correlationData"]] = response
        except queue.Empty:
            raise EnforcementError(f"the broker answered {len(got)} of {len(ids)} dynamic-security "
                                   f"commands within {timeout:.0f} s (is the plugin loaded, and does this "
                                   f"identity hold its admin role?)") from None
        finally:
            with self._lock:
                for cid in ids:
                    self._waiting.pop(cid, None)
        return [got[cid] for cid in ids]


class TransportExecutor:
    """Commands over a hub worker's own connection (its identity holds the admin role): no second
    session that ``use_username_as_clientid`` would make take the worker's over. Build before
    ``transport.start()``: it adds the response subscription."""

    def __init__(self, transport: MqttTransport, timeout: float = 10.0) -> None:
        self._transport = transport
        self._timeout = timeout
        self._correlator = Correlator()
        transport.route(RESPONSE_TOPIC, self._correlator.on_response)

    def __call__(self, commands: Sequence[Command]) -> list[Command]:
        payload, ids, answers = self._correlator.prepare(commands)
        if not self._transport.publish_all([Outgoing(CONTROL_TOPIC, payload)], self._timeout):
            raise EnforcementError("the broker did not acknowledge a dynamic-security command")
        return self._correlator.collect(ids, answers, self._timeout)


class ConnectionExecutor:
    """Commands over a connection of their own, opened for each call (the operator CLI)."""

    def __init__(self, address: BrokerAddress, timeout: float = 10.0) -> None:
        self._address = address
        self._timeout = timeout

    def __call__(self, commands: Sequence[Command]) -> list[Command]:
        correlator = Correlator()
        ready: queue.Queue[str] = queue.Queue()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self._address.client_id, protocol=mqtt.MQTTv5)
        if self._address.tls_ca:
            client.tls_set(ca_certs=self._address.tls_ca, certfile=self._address.tls_cert or None,
                           keyfile=self._address.tls_key or None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.on_socket_open = send_without_delay
        client.on_connect = lambda c, _u, _f, rc, _p: (
            ready.put(f"refused: {rc}") if rc.is_failure else c.subscribe(RESPONSE_TOPIC, qos=0))
        client.on_subscribe = lambda _c, _u, _m, rcs, _p: ready.put(
            "ok" if not any(r.is_failure for r in rcs) else f"subscription refused: {rcs}")
        client.on_message = lambda _c, _u, msg: correlator.on_response(bytes(msg.payload))
        try:
            client.connect(self._address.host, self._address.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise EnforcementError(f"cannot reach the broker's control interface: {exc}") from exc
        client.loop_start()
        try:
            try:
                state = ready.get(timeout=self._timeout)
            except queue.Empty:
                raise EnforcementError("no connection to the broker's control interface in time") from None
            if state != "ok":
                raise EnforcementError(f"broker control interface: {state}")
            payload, ids, answers = correlator.prepare(commands)
            client.publish(CONTROL_TOPIC, payload, qos=1)
            return correlator.collect(ids, answers, self._timeout)
        finally:
            client.disconnect()
            client.loop_stop()
