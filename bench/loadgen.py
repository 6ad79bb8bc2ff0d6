"""The load generator: signed evidence for many device identities over a few MQTT connections.

Evidence is built with the simulator's encoder (``device_sim.evidence``) and
signed *before* a timed phase, so the generator's own signing does not compete
with the hub for CPU. For the benchmark, device keys repeat: ``KEY_POOL``
private keys are shared round-robin by all enrolled identities (enrolling a
million distinct keys would measure key generation, not the hub). A
configurable share of messages is "bad": signed with a key that is not the
enrolled one, so the hub rejects it after a failed verification.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from device_sim import firmware, keys
from device_sim.commands import Epoch, MessageError, parse_command, parse_epoch
from device_sim.evidence import EvidenceClaims, sign_evidence
from hub import wire

KEY_POOL = 16
SEED = "bench"
CLASSES = firmware.DEVICE_CLASSES


class LoadError(RuntimeError):
    """The generator could not connect, or never saw the hub's epoch."""


def device_id(index: int) -> str:
    return f"bench-{index:07d}"


def device_class(index: int) -> str:
    return CLASSES[index % len(CLASSES)]


def ueid(dev_id: str) -> bytes:
    return b"\x01" + hashlib.sha256(dev_id.encode()).digest()[:16]


@dataclass(frozen=True, slots=True)
class KeyPool:
    private: tuple[ec.EllipticCurvePrivateKey, ...]
    public_pem: tuple[str, ...]
    forged: ec.EllipticCurvePrivateKey

    @classmethod
    def make(cls, size: int = KEY_POOL) -> KeyPool:
        private = tuple(keys.device_private_key(SEED, f"pool-{k}") for k in range(size))
        return cls(private, tuple(keys.public_key_pem(k).decode() for k in private),
                   keys.forged_private_key(SEED, "pool"))

    def for_device(self, index: int) -> int:
        return index % len(self.private)


@dataclass(frozen=True, slots=True)
class Evidence:
    device_id: str
    payload: bytes
    bad: bool
    contraindicated: bool = False


@dataclass(slots=True)
class EvidenceFactory:
    """Signs evidence for enrolled indexes; keeps each device's counter so evidence is never a replay."""

    pool: KeyPool
    epoch: Epoch
    bad_share: float = 0.0
    _seq: dict[int, int] = field(default_factory=dict)
    _made: int = 0

    def make(self, index: int, *, tampered: bool = False) -> Evidence:
        dev_id, cls = device_id(index), device_class(index)
        seq = self._seq.get(index, 0) + 1
        self._seq[index] = seq
        self._made += 1
        bad = not tampered and self.bad_share > 0 and (self._made * self.bad_share) % 1.0 < self.bad_share
        claims = EvidenceClaims(
            device_class=cls, ueid=ueid(dev_id), nonce=self.epoch.nonce, bootcount=1, seq=seq, iat=int(time.time()),
            sw_name=firmware.sw_name(cls), sw_version=firmware.CURRENT_VERSION,
            measurements=firmware.measurements(cls, firmware.CURRENT_VERSION, tampered=tampered),
        )
        key = self.pool.forged if bad else self.pool.private[self.pool.for_device(index)]
        return Evidence(dev_id, sign_evidence(claims, key, dev_id), bad, tampered)

    def batch(self, indexes: Sequence[int]) -> list[Evidence]:
        return [self.make(i) for i in indexes]


def _client(host: str, port: int, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, port, keepalive=60)
    return client


def read_epoch(host: str, port: int, hub_key_pem: bytes, timeout: float = 30.0) -> Epoch:
    """The hub's current signed epoch nonce (retained), verified with the hub's public key."""
    hub_key = keys.load_hub_public_key(hub_key_pem)
    got: list[Epoch] = []
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            got.append(parse_epoch(bytes(msg.payload), hub_key))
            done.set()
        except MessageError:
            pass

    client = _client(host, port, f"bench-epoch-{time.monotonic_ns()}")
    client.on_message = on_message
    client.subscribe(wire.EPOCH_TOPIC, qos=1)
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise LoadError("no signed epoch from the hub")
    finally:
        client.disconnect()
        client.loop_stop()
    return got[-1]


class Publisher:
    """``connections`` MQTT connections; evidence is spread over them by device index."""

    def __init__(self, host: str, port: int, connections: int = 4) -> None:
        self.clients = [_client(host, port, f"bench-pub-{i}-{time.monotonic_ns()}") for i in range(connections)]
        for client in self.clients:
            client.loop_start()
        self._props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self._props.ContentType = wire.FIRMWARE_MEDIA_TYPE

    def publish(self, evidence: Evidence, slot: int) -> mqtt.MQTTMessageInfo:
        client = self.clients[slot % len(self.clients)]
        return client.publish(wire.device_topic(evidence.device_id, wire.EVIDENCE), evidence.payload, qos=1,
                              properties=self._props)

    def burst(self, items: Sequence[Evidence]) -> float:
        """Publish everything as fast as the connections take it; returns when every PUBACK arrived."""
        start = time.perf_counter()
        infos = [self.publish(item, i) for i, item in enumerate(items)]
        for info in infos:
            info.wait_for_publish(120)
        return time.perf_counter() - start

    def paced(self, items: Sequence[Evidence], rate: float) -> Iterator[tuple[Evidence, float]]:
        """Publish at ``rate`` per second; yields each item with its publish time (perf_counter)."""
        start = time.perf_counter()
        for i, item in enumerate(items):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            at = time.perf_counter()
            self.publish(item, i)
            yield item, at

    def close(self) -> None:
        for client in self.clients:
            client.disconnect()
            client.loop_stop()


class Watcher:
    """Arrival times of results (per device) and of quarantine commands (per device), live messages only."""

    def __init__(self, host: str, port: int, hub_key_pem: bytes) -> None:
        self.hub_key = keys.load_hub_public_key(hub_key_pem)
        self.results: dict[str, float] = {}
        self.quarantines: dict[str, float] = {}
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-watch-{time.monotonic_ns()}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.connect(host, port, keepalive=60)
        # retain handling 2 (MQTT 5 §3.8.3.1): no retained copies at subscribe. With them the broker sends one
        # result per device of the earlier phases (10,000 after the drains) ahead of the live ones, and the
        # first ~0.7 s of a phase measured that flood, not the hub.
        live = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        self.client.subscribe([(f"{wire.FLEET_ROOT}/+/{wire.RESULT}", live),
                               (f"{wire.FLEET_ROOT}/+/{wire.COMMAND}", live)])
        self.client.loop_start()
        if not self._ready.wait(10):
            raise LoadError("watcher could not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        at = time.perf_counter()
        if msg.retain:  # retained copies from earlier phases
            return
        _, dev, leaf = msg.topic.split("/", 2)
        if leaf == wire.RESULT:
            self.results.setdefault(dev, at)
        elif leaf == wire.COMMAND:
            try:
                command = parse_command(bytes(msg.payload), self.hub_key)  # the device's own check
            except MessageError:
                return
            if command.type == wire.COMMAND_QUARANTINE and command.sub == dev:
                self.quarantines.setdefault(dev, at)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
