"""End-to-end test plumbing: a hub state on disk, a simulated fleet, and an MQTT observer.

With ``HUB_TEST_DATABASE=postgresql`` every ``make_env`` gets a fresh
PostgreSQL database (on ``ATTEST_HUB_TEST_PG_URL``, default the local server's
``test`` database as ``postgres``), dropped when the test process exits;
otherwise SQLite in the test's state directory.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device_sim.device import SimDevice
from device_sim.fleet import Fleet
from device_sim.profiles import build_fleet
from hub.appraisal.operations import Enrolment
from hub.broker.process import MosquittoProcess
from hub.config import Settings, load_settings
from hub.crypto.cose import decode_sign1, verify_sign1
from hub.crypto.hubkeys import HubKeys, load_hub_keys
from hub.crypto.hubstate import open_store
from hub.crypto.keys import public_pem
from hub.server.localhub import enrol_all, prepare_state
from hub.store import Store

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_admin_url() -> str:
    return os.environ.get("ATTEST_HUB_TEST_PG_URL", PG_ADMIN_URL)


def _pg_admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(_pg_admin_url())
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def _drop_pg_database(name: str) -> None:
    _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def fresh_pg_database() -> str:
    """Create an empty PostgreSQL database for one test; returns its URL (dropped at process exit)."""
    name = f"attest_test_{uuid.uuid4().hex[:12]}"
    _pg_admin(f"CREATE DATABASE {name}")
    atexit.register(_drop_pg_database, name)
    return _pg_admin_url().rsplit("/", 1)[0] + "/" + name


def test_database_url() -> str | None:
    """The database the end-to-end tests should use: None (SQLite in the state dir) or a fresh PostgreSQL one."""
    wanted = os.environ.get("HUB_TEST_DATABASE", "sqlite").lower()
    if wanted == "sqlite":
        return None
    if wanted != "postgresql":
        raise ValueError(f"HUB_TEST_DATABASE={wanted!r}: expected sqlite or postgresql")
    return fresh_pg_database()


test_database_url.__test__ = False  # type: ignore[attr-defined]  # a helper, not a pytest test


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    props: Any


@dataclass
class Observer:
    """Subscribes to topic filters and keeps every message, thread-safe."""

    host: str
    port: int
    filters: tuple[str, ...]
    messages: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"observer-{id(self)}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in self.filters])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._ready.set()
        self.client.on_message = self._on_message

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain),
                                          getattr(msg, "properties", None)))

    def start(self) -> Observer:
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        assert self._ready.wait(10), "observer could not subscribe"
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def wait(self, predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def signed_payload(raw: bytes, keys: HubKeys) -> dict[Any, Any]:
    """Verify a hub-signed message with the hub key and return its payload map."""
    message = decode_sign1(raw)
    verify_sign1(message, keys.public_key)
    payload = cbor2.loads(message.payload)
    assert isinstance(payload, dict)
    return payload


@dataclass
class HubEnv:
    settings: Settings
    keys: HubKeys
    devices: list[SimDevice]
    broker: MosquittoProcess

    @property
    def hub_key_pem(self) -> bytes:
        return public_pem(self.keys.public_key).encode()

    def store(self) -> Store:
        return open_store(self.settings)

    def verdicts(self, device_id: str | None = None) -> list[dict[str, Any]]:
        store = self.store()
        try:
            with store.reading() as conn:
                if device_id is not None:
                    return store.verdict_history(conn, device_id, limit=10_000)
                return [v for d in store.list_devices(conn)
                        for v in store.verdict_history(conn, d.device_id, limit=10_000)]
        finally:
            store.close()

    def verdict_count(self) -> int:
        store = Store(self.settings.effective_database_url)
        try:
            with store.reading() as conn:
                return store.count_verdicts(conn)
        finally:
            store.close()

    def attest_round(self, fleet: Fleet, timeout: float = 20.0) -> int:
        """One round of evidence from every device, published and flushed after the hub's epoch reached the
        fleet; waits until each has a verdict (or ``timeout`` s) and returns the verdict count."""
        assert fleet.wait_for_epoch(10) is not None
        fleet.publish_round()
        assert fleet.flush(10)
        deadline = time.monotonic() + timeout
        while (count := self.verdict_count()) < len(self.devices) and time.monotonic() < deadline:
            time.sleep(0.1)
        return count

    def device_status(self, device_id: str) -> str:
        store = self.store()
        try:
            with store.reading() as conn:
                return store.devices(conn, [device_id])[device_id].status
        finally:
            store.close()


def make_env(broker: MosquittoProcess, tmp_path: Path, n: int, mix: str, **overrides: Any) -> HubEnv:
    if "database_url" not in overrides:
        overrides["database_url"] = test_database_url()
    settings = load_settings(None, environ={}, state_dir=tmp_path / "hub", broker_host=broker.host,
                             broker_port=broker.port, **overrides)
    settings = prepare_state(settings)
    devices = build_fleet(n, mix, seed="e2e")
    enrol_all(settings, [Enrolment(d.device_id, d.device_class, d.public_key_pem.decode(), d.ueid)
                         for d in devices])
    return HubEnv(replace(settings), load_hub_keys(settings), devices, broker)


def count_by(items: list[dict[str, Any]], key: str) -> dict[Any, int]:
    counts: dict[Any, int] = defaultdict(int)
    for item in items:
        counts[item[key]] += 1
    return dict(counts)
