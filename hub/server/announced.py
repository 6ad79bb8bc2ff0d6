"""The epoch this hub last announced on the broker: a hub-signed, retained checkpoint read back at start.

Every epoch advance commits the new epoch to the database, steps the generation, and then publishes the
epoch, signed with the hub key, retained on ``hub/epoch``. So the retained announcement is a lower bound on
the database's epoch that lives outside both the database and the state directory: a database whose epoch is
below it was restored or rolled back even if the state directory was restored with it (a machine snapshot).
``attest-hub serve`` refuses such a database before starting workers, and ``attest-hub db accept-restore``
moves the epoch past the announced one too.
"""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub import wire
from hub.config import Settings
from hub.crypto.cbor_strict import CborError, loads_strict
from hub.crypto.cose import CoseError, decode_sign1, verify_sign1
from hub.crypto.keys import PublicKey


class BrokerUnreachable(RuntimeError):
    """The broker could not be asked (not connected or no subscription within the timeout)."""


def epoch_of(raw: bytes, hub_key: PublicKey) -> int | None:
    """The epoch of an announcement signed by ``hub_key``; None for anything else (forged, malformed)."""
    try:
        message = decode_sign1(raw, max_bytes=4096)
        verify_sign1(message, hub_key)
        claims = loads_strict(message.payload, max_bytes=4096)
    except (CoseError, CborError):
        return None
    if not isinstance(claims, dict) or claims.get(wire.EAT_PROFILE) != wire.EPOCH_PROFILE:
        return None
    epoch = claims.get(wire.EPOCH_ID)
    return epoch if type(epoch) is int and epoch >= 0 else None


def announced_epoch(settings: Settings, hub_key: PublicKey, timeout: float = 5.0) -> int | None:
    """The epoch in the retained, hub-signed announcement on the broker (None: there is none, or it is not
    this hub's). Raises ``BrokerUnreachable`` if the broker cannot be asked within ``timeout`` seconds."""
    found: list[int | None] = []
    subscribed = threading.Event()
    done = threading.Event()
    tls = bool(settings.broker_tls_ca)
    # Under mutual TLS the broker takes the client id from the certificate (prod.conf), so this check
    # connects as worker 0's identity: it must neither wipe nor acknowledge that identity's queued
    # evidence, so it resumes the session (clean start off, the workers' expiry) and acknowledges nothing.
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{settings.hub_id}-check-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5, manual_ack=True)
    connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if tls:
        cert, key = settings.worker_tls(0)
        connect_props.SessionExpiryInterval = settings.session_expiry_s
        try:
            client.tls_set(ca_certs=settings.broker_tls_ca, certfile=cert or None, keyfile=key or None)
        except (OSError, ValueError) as exc:
            raise BrokerUnreachable(f"cannot load the TLS material for the broker: {exc}") from exc

    def on_message(_client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            found.append(epoch_of(bytes(msg.payload), hub_key))
            done.set()

    client.on_message = on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_connect = lambda c, *_args: c.subscribe(wire.EPOCH_TOPIC, qos=1)
    try:
        client.connect(settings.broker_host, settings.broker_port, clean_start=not tls, properties=connect_props)
    except OSError as exc:
        raise BrokerUnreachable(f"cannot reach the broker: {exc}") from exc
    client.loop_start()
    try:
        if not subscribed.wait(timeout):
            raise BrokerUnreachable("no subscription to the epoch topic")
        done.wait(0.5)  # a retained message follows the SUBACK at once; none means no announcement yet
    finally:
        client.disconnect()
        client.loop_stop()
    return found[0] if found else None
