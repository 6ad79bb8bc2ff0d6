"""What this hub last announced on the broker: hub-signed, retained checkpoints read back at start.

Two retained messages, both COSE_Sign1 (RFC 9052) with the hub key, live outside both the database and the
state directory, so they catch a database restored together with its state directory (a machine snapshot):

- ``hub/epoch``: every epoch advance commits the new epoch, steps the generation, then publishes the epoch
  (hub/appraisal/messages.py). A database whose epoch is below it is older than that announcement.
- ``hub/generation``: every generation step (start, epoch advance, the ``generation_period_s`` timer, clean
  stop; hub/crypto/hubstate.py) commits, then publishes ``{265: GENERATION_PROFILE, 6: iat, -65561:
  generation, -65560: epoch}`` (:func:`generation_message`). A database whose generation is below it was
  restored or rolled back, even when the epoch did not move since the copy.

``attest-hub serve`` refuses such a database before starting workers, and ``attest-hub db accept-restore``
moves the epoch and the generation past the retained ones. Only hub identities may write ``hub/#`` on the
production broker (broker_config/acl, HUB_ACL_TOPICS); devices read ``hub/epoch`` only.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub import wire
from hub.config import Settings
from hub.crypto.cbor_strict import CborError, loads_strict
from hub.crypto.cose import CoseError, decode_sign1, sign1, verify_sign1
from hub.crypto.keys import PrivateKey, PublicKey

log = logging.getLogger(__name__)


class BrokerUnreachable(RuntimeError):
    """The broker could not be asked (not connected or no subscription within the timeout)."""


@dataclass(frozen=True, slots=True)
class Announced:
    """The retained checkpoints signed by this hub's key (None: none, or not this hub's)."""

    epoch: int | None = None
    generation: int | None = None


def generation_message(generation: int, epoch: int, issued_at: int, key: PrivateKey, kid: bytes) -> bytes:
    """The generation checkpoint retained on ``hub/generation``: COSE_Sign1 over
    ``{265: GENERATION_PROFILE, 6: iat (s), -65561: generation, -65560: epoch}``."""
    payload = cbor2.dumps({wire.EAT_PROFILE: wire.GENERATION_PROFILE, wire.IAT: issued_at,
                           wire.GENERATION_ID: generation, wire.EPOCH_ID: epoch})
    return sign1(payload, key, kid=kid)


def _claim(raw: bytes, hub_key: PublicKey, profile: str, key: int) -> int | None:
    try:
        message = decode_sign1(raw, max_bytes=4096)
        verify_sign1(message, hub_key)
        claims = loads_strict(message.payload, max_bytes=4096)
    except (CoseError, CborError):
        return None
    if not isinstance(claims, dict) or claims.get(wire.EAT_PROFILE) != profile:
        return None
    value = claims.get(key)
    return value if type(value) is int and value >= 0 else None


def epoch_of(raw: bytes, hub_key: PublicKey) -> int | None:
    """The epoch of an announcement signed by ``hub_key``; None for anything else (forged, malformed)."""
    return _claim(raw, hub_key, wire.EPOCH_PROFILE, wire.EPOCH_ID)


def generation_of(raw: bytes, hub_key: PublicKey) -> int | None:
    """The generation of a checkpoint signed by ``hub_key``; None for anything else (forged, malformed)."""
    return _claim(raw, hub_key, wire.GENERATION_PROFILE, wire.GENERATION_ID)


def announced(settings: Settings, hub_key: PublicKey, timeout: float = 5.0) -> Announced:
    """The retained, hub-signed epoch and generation on the broker, read in one connection.

    Raises ``BrokerUnreachable`` if the broker cannot be asked within ``timeout`` seconds."""
    found: dict[str, int | None] = {}
    subscribed = threading.Event()
    done = threading.Event()
    tls = bool(settings.broker_tls_ca)
    # Under mutual TLS the broker takes the client id from the certificate (prod.conf), so this check
    # connects as worker 0's identity: it must neither wipe nor acknowledge that identity's queued
    # evidence, so it resumes the session (clean start off, the workers' expiry), acknowledges only the
    # checkpoints it reads, and unsubscribes before it leaves.
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
    readers = {wire.EPOCH_TOPIC: epoch_of, wire.GENERATION_TOPIC: generation_of}

    def on_message(_client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        reader = readers.get(msg.topic)
        if reader is None:
            return  # worker 0's queued evidence: never acknowledged here, the broker sends it to worker 0 again
        client.ack(msg.mid, msg.qos)  # a checkpoint, not evidence: unacknowledged it would stay in the session
        if msg.retain:
            found[msg.topic] = reader(bytes(msg.payload), hub_key)
            if len(found) == len(readers):
                done.set()

    client.on_message = on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_connect = lambda c, *_args: c.subscribe([(topic, 1) for topic in readers])
    try:
        client.connect(settings.broker_host, settings.broker_port, clean_start=not tls, properties=connect_props)
    except OSError as exc:
        raise BrokerUnreachable(f"cannot reach the broker: {exc}") from exc
    client.loop_start()
    try:
        if not subscribed.wait(timeout):
            raise BrokerUnreachable("no subscription to the epoch and generation topics")
        done.wait(0.5)  # retained messages follow the SUBACK at once; none means no checkpoint yet
    finally:
        if tls:  # leave worker 0's session with the subscriptions it had: wait for the UNSUBACK, since a
            # DISCONNECT written right behind the UNSUBSCRIBE sometimes left them in the session
            unsubscribed = threading.Event()
            client.on_unsubscribe = lambda *_args: unsubscribed.set()
            _result, _mid = client.unsubscribe(list(readers))
            if not unsubscribed.wait(timeout):
                log.warning("the broker did not confirm the end of the checkpoint subscriptions in %.0f s", timeout)
        client.disconnect()
        client.loop_stop()
    return Announced(found.get(wire.EPOCH_TOPIC), found.get(wire.GENERATION_TOPIC))


def announced_epoch(settings: Settings, hub_key: PublicKey, timeout: float = 5.0) -> int | None:
    """The epoch in the retained, hub-signed announcement on the broker (see :func:`announced`)."""
    return announced(settings, hub_key, timeout).epoch
