"""Test plumbing for broker enforcement: prod.conf (mutual TLS + acl_file), hub and device certificates,
a hub state whose settings enforce quarantine through the ACL file, and a TLS observer."""

from __future__ import annotations

import queue
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device_sim.device import SimDevice
from device_sim.fleet import Fleet, FleetTls
from device_sim.profiles import build_fleet
from hub.appraisal.operations import Enrolment
from hub.broker.process import render_acl
from hub.config import Settings, load_settings
from hub.crypto import pki
from hub.crypto.hubstate import open_store
from hub.crypto.keys import public_pem
from hub.server.localhub import LocalHub, enrol_all, prepare_state

if TYPE_CHECKING:
    from tests.conftest import ProdBroker

HUB_IDENTITIES = ("w1", "cli", "obs")  # the worker, the operator CLI, a test observer: one certificate each
NOT_AUTHORIZED = 0x87


@dataclass
class SecureEnv:
    prod: ProdBroker
    settings: Settings  # the hub worker (certificate hub-w1)
    cli_settings: Settings  # the operator CLI (certificate hub-cli)
    devices: list[SimDevice]
    tls: FleetTls
    obs_cert: pki.IssuedCert

    def fleet(self, hub: LocalHub, **kwargs: Any) -> Fleet:
        hub_key = public_pem(hub.workers[0].keys.public_key).encode()
        return Fleet(self.prod.process.host, self.prod.process.port, self.devices, hub_key, tls=self.tls, **kwargs)

    def status(self, device_id: str) -> str:
        store = open_store(self.settings)
        try:
            with store.reading() as conn:
                return store.devices(conn, [device_id])[device_id].status
        finally:
            store.close()

    def verdict_count(self, device_id: str) -> int:
        store = open_store(self.settings)
        try:
            with store.reading() as conn:
                return len(store.verdict_history(conn, device_id, limit=100_000))
        finally:
            store.close()

    def audit(self, device_id: str) -> list[dict[str, Any]]:
        store = open_store(self.settings)
        try:
            with store.reading() as conn:
                return [r for r in store.audit_rows(conn) if r["device_id"] == device_id]
        finally:
            store.close()

    def connections_of(self, device_id: str) -> int:
        """How many times the broker logged a new connection for this identity."""
        log = self.prod.process.log_path.read_text(encoding="utf-8", errors="replace")
        return len(re.findall(rf"New client connected from \S+ as {re.escape(device_id)} ", log))


def make_secure_env(prod: ProdBroker, tmp_path: Path, mix: str, count: int, **hub_settings: Any) -> SecureEnv:
    prod.acl_path.write_text(render_acl(HUB_IDENTITIES), encoding="utf-8")
    # Mosquitto accepts connections before it installs its SIGHUP handler; a SIGHUP in between
    # terminates it. Its "running" log line comes after the handlers are in place.
    assert wait_for(lambda: " running" in prod.process.log_path.read_text(encoding="utf-8", errors="replace"), 10)
    prod.process.reload()
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(f"{prod.process.pid}\n", encoding="ascii")
    certs = {name: pki.issue_hub_cert(prod.ca, prod.pki_dir, name) for name in HUB_IDENTITIES}
    devices = build_fleet(count, mix, seed="enforcement")
    device_certs = {}
    for device in devices:
        issued = pki.issue_device_cert(prod.ca, prod.pki_dir, device.device_id)
        device_certs[device.device_id] = (str(issued.cert_path), str(issued.key_path))
    settings = load_settings(
        None, environ={}, state_dir=tmp_path / "hub", broker_host=prod.process.host, broker_port=prod.process.port,
        broker_tls_ca=str(prod.ca.cert_path), broker_tls_cert=str(certs["w1"].cert_path),
        broker_tls_key=str(certs["w1"].key_path), epoch_period_s=60.0, broker_enforcement="acl-file",
        broker_acl_file=str(prod.acl_path), broker_pid_file=str(pid_file), **hub_settings,
    )
    settings = prepare_state(settings)
    enrol_all(settings, [Enrolment(d.device_id, d.device_class, d.public_key_pem.decode(), d.ueid) for d in devices])
    cli_settings = replace(settings, broker_tls_cert=str(certs["cli"].cert_path),
                           broker_tls_key=str(certs["cli"].key_path))
    return SecureEnv(prod, settings, cli_settings, devices, FleetTls(str(prod.ca.cert_path), device_certs),
                     certs["obs"])


class TlsObserver:
    """A hub-side MQTT v5 client (its own hub identity) that records what it receives."""

    def __init__(self, env: SecureEnv, *filters: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.seen: list[tuple[str, bytes]] = []
        subscribed = queue.Queue[int]()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.tls_set(ca_certs=str(env.prod.ca.cert_path), certfile=str(env.obs_cert.cert_path),
                       keyfile=str(env.obs_cert.key_path))
        client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in filters])
        client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.put(mid)
        client.on_message = lambda c, u, msg: self.messages.put((msg.topic, bytes(msg.payload)))
        client.connect(env.prod.process.host, env.prod.process.port)
        client.loop_start()
        subscribed.get(timeout=10)
        self.client = client

    def drain(self) -> list[tuple[str, bytes]]:
        while not self.messages.empty():
            self.seen.append(self.messages.get_nowait())
        return self.seen

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True
