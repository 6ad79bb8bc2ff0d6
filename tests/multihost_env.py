"""Two hub "hosts" (network namespaces with loopback only) against one broker and one PostgreSQL.

Plumbing for tests/test_multihost.py and bench/multihost.py: a dynamic-security broker and a fresh
PostgreSQL database in the test's own namespace, reached from each namespace through ``Forwarder``s
on that namespace's loopback; one ``attest-hub serve --workers N`` process group per host, each with
its own state directory (a copy of the shared secrets), its own ``hub_id`` and one certificate per
worker (``hub-<host>-w{index}``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_sim.fleet import Fleet, FleetTls
from device_sim.profiles import build_fleet
from hub.appraisal.operations import Enrolment
from hub.config import Settings, load_settings
from hub.crypto import pki
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.keys import public_pem
from hub.server.localhub import enrol_all, prepare_state
from tests.dynsec_env import DynsecBroker, dynsec_broker
from tests.e2e import fresh_pg_database
from tests.netns import Forwarder, ForwarderProcess, exec_in, namespaces

PG = ("127.0.0.1", 5432)
METRICS_PORT = 9400
HUB_BIN = str(Path(sys.executable).with_name("attest-hub"))


@dataclass
class Host:
    name: str  # the hub_id, "a" or "b"
    netns: str
    config: Path
    log: Path
    workers: int
    metrics: list[int] = field(default_factory=list)  # forwarded /metrics ports, one per worker
    procs: list[Any] = field(default_factory=list)

    def start(self, netns: str | None = None) -> None:
        """``serve`` in this host's namespace, or in ``netns`` (another host taking its identities over)."""
        self.procs.append(exec_in(netns or self.netns, [HUB_BIN, "-v", "--config", str(self.config), "serve",
                                                        "--workers", str(self.workers)], self.log))

    def kill(self) -> None:
        """SIGKILL the whole process group: the host is gone, no clean disconnect, no final commit."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def pause(self, resume: bool = False) -> None:
        """SIGSTOP (or SIGCONT) the host's processes: connections stay open, the broker queues for them."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT if resume else signal.SIGSTOP)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except Exception:
                os.killpg(proc.pid, signal.SIGKILL)

    def received(self, scheme: str = "firmware") -> float:
        """Evidence of ``scheme`` received by this host's workers (``attest_evidence_received``); a worker
        that cannot be reached counts 0."""
        total = 0.0
        for port in self.metrics:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue
            pattern = rf'^attest_evidence_received_total\{{scheme="{re.escape(scheme)}"\}} (\S+)$'
            total += sum(float(m) for m in re.findall(pattern, text, re.MULTILINE))
        return total


@dataclass
class TwoHosts:
    broker: DynsecBroker
    settings: Settings
    hosts: dict[str, Host]
    fleet: Fleet
    database_url: str

    def start(self, name: str, timeout: float = 30.0) -> None:
        """Start host ``name`` and wait until the broker has seen every one of its workers connect."""
        host = self.hosts[name]
        host.start()
        wanted = [f"hub-{name}-w{i}" for i in range(host.workers)]
        deadline = time.monotonic() + timeout
        while not all(self.connected(i) for i in wanted):
            if time.monotonic() > deadline:
                raise RuntimeError(f"hub workers did not all connect: {wanted}\n"
                                   + host.log.read_text(errors="replace")[-2000:])
            time.sleep(0.1)

    def connected(self, identity: str) -> int:
        log = self.broker.process.log_path.read_text(encoding="utf-8", errors="replace")
        return len(re.findall(rf"New client connected from \S+ as {re.escape(identity)} ", log))

    def dynsec_senders(self, device_id: str) -> list[str]:
        """Hub identities that sent the plugin a command naming ``device_id`` (from the broker's log)."""
        log = self.broker.process.log_path.read_text(encoding="utf-8", errors="replace")
        return re.findall(rf"dynsec: (hub-[\w-]+)/[\w-]+ \| \w+ \| username={re.escape(device_id)}\b", log)

    def verdict_keys(self) -> list[tuple[str, str]]:
        import psycopg2

        conn = psycopg2.connect(self.database_url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT device_id, dedup_key FROM verdict WHERE scheme = 'firmware'")
                return [(str(a), str(b)) for a, b in cur.fetchall()]
        finally:
            conn.close()


def make_two_hosts(stack: ExitStack, tmp_path: Path, mix: str, count: int, workers: int = 2,
                   start: tuple[str, ...] = ("a", "b"), fleet_options: dict[str, Any] | None = None,
                   **hub_settings: Any) -> TwoHosts:
    """The hosts in ``start`` started and connected, the fleet connected; ``stack`` tears it all down
    (namespaces last)."""
    ns_a, ns_b = stack.enter_context(namespaces(2))
    identities = (*(f"{h}-w{i}" for h in ("a", "b") for i in range(workers)), "cli", "obs")
    broker = stack.enter_context(dynsec_broker(tmp_path, identities))
    port = broker.process.port
    database_url = fresh_pg_database()
    for name in identities:
        pki.issue_hub_cert(broker.ca, broker.pki_dir, name)
    devices = build_fleet(count, mix, seed="multihost")
    device_certs = {}
    for device in devices:
        issued = pki.issue_device_cert(broker.ca, broker.pki_dir, device.device_id)
        device_certs[device.device_id] = (str(issued.cert_path), str(issued.key_path))
    settings = prepare_state(load_settings(None, environ={}, state_dir=tmp_path / "state-a",
                                           database_url=database_url))
    enrol_all(settings, [Enrolment(d.device_id, d.device_class, d.public_key_pem.decode(), d.ueid) for d in devices])
    shutil.copytree(tmp_path / "state-a", tmp_path / "state-b")  # the secrets, as a secret store would
    hosts: dict[str, Host] = {}
    for offset, (name, netns) in enumerate((("a", ns_a), ("b", ns_b))):
        metrics_port = METRICS_PORT + 10 * offset  # distinct, so a host can take the other's workers over
        # broker and database traffic through a process of its own; the metrics (little traffic) in-process
        moved = ForwarderProcess([(netns, ("127.0.0.1", port), None, ("127.0.0.1", port)), (netns, PG, None, PG)])
        stack.callback(moved.close)
        values = {
            "state_dir": str(tmp_path / f"state-{name}"), "database_url": database_url, "hub_id": name,
            "broker_host": "127.0.0.1", "broker_port": port, "broker_tls_ca": str(broker.ca.cert_path),
            "broker_tls_cert": str(broker.pki_dir / f"hub-{name}-w{{index}}.crt"),
            "broker_tls_key": str(broker.pki_dir / f"hub-{name}-w{{index}}.key"),
            "broker_enforcement": "dynsec", "leader": name == "a", "workers": workers,
            "operator_keys": list(settings.operator_keys), "epoch_period_s": 120.0, "batch_wait_ms": 2.0,
            "metrics_port": metrics_port, "anomaly_interval_s": 0.0, **hub_settings,
        }
        config = tmp_path / f"host-{name}.toml"
        config.write_text("[hub]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
        host = Host(name, netns, config, tmp_path / f"host-{name}.log", workers)
        for index in range(workers):
            fwd = Forwarder(None, ("127.0.0.1", 0), netns, ("127.0.0.1", metrics_port + index))
            stack.callback(fwd.close)
            host.metrics.append(fwd.port)
        hosts[name] = host
    for host in hosts.values():
        stack.callback(host.stop)
    hub_key = public_pem(load_hub_keys(settings).public_key).encode()
    fleet = Fleet(broker.process.host, port, devices, hub_key, tls=FleetTls(str(broker.ca.cert_path), device_certs),
                  data=True, **(fleet_options or {}))
    env = TwoHosts(broker, settings, hosts, fleet, database_url)
    for name in start:
        env.start(name)
    fleet.start(timeout=60)
    stack.callback(fleet.stop)
    return env
