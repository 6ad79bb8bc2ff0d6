"""Test plumbing for enforcement through Mosquitto's dynamic-security plugin: broker_config/prod-dynsec.conf
(mutual TLS, acl_file for the per-device grants, the plugin for the status roles), certificates, a hub state
whose settings say ``broker_enforcement = "dynsec"``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from device_sim.fleet import FleetTls
from device_sim.profiles import build_fleet
from hub.appraisal.operations import Enrolment
from hub.broker.dynsec import initial_config
from hub.broker.process import MosquittoProcess, find_dynsec_plugin, render_acl
from hub.config import load_settings
from hub.crypto import pki
from hub.server.localhub import enrol_all, prepare_state
from tests.enforcement_env import HUB_IDENTITIES, SecureEnv, wait_for


@dataclass(frozen=True)
class DynsecBroker:
    """Duck-types tests.conftest.ProdBroker (process, ca, pki_dir, acl_path) and adds the plugin's file."""

    process: MosquittoProcess
    ca: pki.CertificateAuthority
    pki_dir: Path
    acl_path: Path
    dynsec_path: Path


@contextmanager
def dynsec_broker(tmp_path: Path, hub_identities: tuple[str, ...] = HUB_IDENTITIES,
                  host: str = "127.0.0.1", port: int | None = None,
                  server_ips: tuple[str, ...] = ("127.0.0.1",)) -> Iterator[DynsecBroker]:
    pki_dir = tmp_path / "pki"
    ca = pki.create_ca(pki_dir, "Test Fleet CA")
    server = pki.issue_server_cert(ca, pki_dir, ip_addresses=server_ips)
    acl_path = tmp_path / "acl"
    acl_path.write_text(render_acl(hub_identities), encoding="utf-8")
    dynsec_path = tmp_path / "dynamic-security.json"
    cns = [pki.hub_common_name(name) for name in hub_identities]
    dynsec_path.write_text(json.dumps(initial_config(cns)), encoding="utf-8")
    values = {"cafile": str(ca.cert_path), "certfile": str(server.cert_path), "keyfile": str(server.key_path),
              "acl_file": str(acl_path), "dynsec_plugin": find_dynsec_plugin(), "dynsec_file": str(dynsec_path)}
    proc = MosquittoProcess("prod-dynsec.conf", tmp_path / "broker", host=host, port=port, values=values)
    proc.start()
    try:
        assert wait_for(lambda: " running" in proc.log_path.read_text(encoding="utf-8", errors="replace"), 10)
        yield DynsecBroker(proc, ca, pki_dir, acl_path, dynsec_path)
    finally:
        proc.stop()


def make_dynsec_env(broker: DynsecBroker, tmp_path: Path, mix: str, count: int, **hub_settings: Any) -> SecureEnv:
    certs = {name: pki.issue_hub_cert(broker.ca, broker.pki_dir, name) for name in HUB_IDENTITIES}
    devices = build_fleet(count, mix, seed="dynsec")
    device_certs = {}
    for device in devices:
        issued = pki.issue_device_cert(broker.ca, broker.pki_dir, device.device_id)
        device_certs[device.device_id] = (str(issued.cert_path), str(issued.key_path))
    settings = load_settings(
        None, environ={}, state_dir=tmp_path / "hub", broker_host=broker.process.host,
        broker_port=broker.process.port, broker_tls_ca=str(broker.ca.cert_path),
        broker_tls_cert=str(certs["w1"].cert_path), broker_tls_key=str(certs["w1"].key_path), epoch_period_s=60.0,
        broker_enforcement="dynsec", **hub_settings,
    )
    settings = prepare_state(settings)
    enrol_all(settings, [Enrolment(d.device_id, d.device_class, d.public_key_pem.decode(), d.ueid) for d in devices])
    cli_settings = replace(settings, broker_tls_cert=str(certs["cli"].cert_path),
                           broker_tls_key=str(certs["cli"].key_path))
    return SecureEnv(broker, settings, cli_settings, devices,  # type: ignore[arg-type]
                     FleetTls(str(broker.ca.cert_path), device_certs), certs["obs"])
