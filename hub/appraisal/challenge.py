"""On-demand attestation: send a device a single-use challenge nonce and wait for the verdict.

The challenge is a signed command (``challenge``) carrying a nonce from
``hub.crypto.freshness.challenge_nonce``: bound to the device, valid for the current
and next epoch, accepted once by whichever worker receives the answer. The
hub echoes the evidence's nonce (EAT claim 10) in its signed result, which is
how the operator, or any relying party that asked, matches the answer to the
question.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hub import wire
from hub.appraisal.messages import Command
from hub.appraisal.operations import OperationError, publish_once
from hub.audit import AuditDraft, append
from hub.broker.transport import TransportError
from hub.config import Settings
from hub.crypto.cose import CoseError, decode_sign1, verify_sign1
from hub.crypto.freshness import challenge_nonce
from hub.crypto.hubkeys import HubKeys
from hub.envelope import Outgoing
from hub.store import Store


@dataclass(frozen=True, slots=True)
class ChallengeOutcome:
    device_id: str
    nonce: bytes
    answered: bool
    status: int | None = None
    problems: tuple[str, ...] = ()
    action: str = ""


def make_challenge(store: Store, keys: HubKeys, device_id: str, ttl_s: int, actor: str = "operator",
                   now: float | None = None) -> tuple[Outgoing, bytes]:
    when = time.time() if now is None else now
    with store.transaction() as conn:
        device = store.devices(conn, [device_id]).get(device_id)
        if device is None:
            raise OperationError(f"unknown device {device_id!r}")
        if device.revoked:
            raise OperationError(f"{device_id} is revoked")
        epoch = int(store.get_state(conn, "epoch") or 0)
        if epoch == 0:
            raise OperationError("no epoch yet: start the hub (attest-hub serve) first")
        nonce = challenge_nonce(keys.nonce_secret, device_id, epoch)
        command = Command(device_id, wire.COMMAND_CHALLENGE, device.command_seq, int(when), int(when) + ttl_s,
                          "on-demand attestation", nonce=nonce)
        append(store, conn, [AuditDraft(when, actor, "challenge", device_id, {"nonce": nonce.hex()})])
    signed = command.sign(keys.signing_key, keys.kid)
    return Outgoing(wire.device_topic(device_id, wire.COMMAND), signed), nonce


def challenge_and_wait(
    settings: Settings, store: Store, keys: HubKeys, device_id: str, wait_s: float
) -> ChallengeOutcome:
    """Publish a challenge, then wait up to ``wait_s`` for the signed result that echoes its nonce."""
    message, nonce = make_challenge(store, keys, device_id, max(60, int(wait_s) * 2))
    found: list[dict[object, object]] = []
    done = threading.Event()

    def on_message(_client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            result = decode_sign1(bytes(msg.payload))
            verify_sign1(result, keys.public_key)
            payload = cbor2.loads(result.payload)
        except (CoseError, ValueError):
            return
        if isinstance(payload, dict) and payload.get(wire.NONCE) == nonce:
            found.append(payload)
            done.set()

    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{settings.hub_id}-challenge-{nonce[-4:].hex()}",
                         protocol=mqtt.MQTTv5)
    if settings.broker_tls_ca:
        client.tls_set(ca_certs=settings.broker_tls_ca, certfile=settings.broker_tls_cert or None,
                       keyfile=settings.broker_tls_key or None)
    client.on_message = on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_connect = lambda c, *_args: c.subscribe(wire.device_topic(device_id, wire.RESULT), qos=1)
    try:
        client.connect(settings.broker_host, settings.broker_port)
    except OSError as exc:
        raise TransportError(f"cannot reach the broker: {exc}") from exc
    client.loop_start()
    try:
        if not subscribed.wait(10):
            raise TransportError("could not subscribe to the device's result topic")
        publish_once(settings, [message], f"{settings.hub_id}-cli")
        done.wait(wait_s)
    finally:
        client.disconnect()
        client.loop_stop()
    if not found:
        return ChallengeOutcome(device_id, nonce, False)
    result = found[0]
    submods = result.get(wire.SUBMODS)
    status = None
    if isinstance(submods, dict) and submods:
        appraisal = next(iter(submods.values()))
        status = appraisal.get(wire.EAR_STATUS) if isinstance(appraisal, dict) else None
    raw_problems = result.get(wire.RES_PROBLEMS)
    problems = tuple(str(p) for p in raw_problems) if isinstance(raw_problems, list) else ()
    return ChallengeOutcome(device_id, nonce, True, status if isinstance(status, int) else None, problems,
                            str(result.get(wire.RES_ACTION, "")))
