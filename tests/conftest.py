"""Shared pytest fixtures: real Mosquitto brokers (development and mutual-TLS production configs); every test's
simulator boot counters in its own folder, never the user's."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hub.broker.process import MosquittoProcess, render_acl
from hub.crypto import pki


@pytest.fixture(autouse=True)
def _sim_boot_counters(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """``device-sim run`` (in this process or a child) keeps its boot counters in a fresh folder per test."""
    monkeypatch.setenv("DEVICE_SIM_STATE_DIR", str(tmp_path_factory.mktemp("device-sim")))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A real Mosquitto started from broker_config/dev.conf, data and log in ``tmp_path``; stopped afterwards."""
    proc = MosquittoProcess("dev.conf", tmp_path / "broker")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@dataclass(frozen=True)
class ProdBroker:
    """A broker from broker_config/prod.conf and the CA whose certificates it accepts."""

    process: MosquittoProcess
    ca: pki.CertificateAuthority
    pki_dir: Path
    acl_path: Path


@pytest.fixture
def prod_broker(tmp_path: Path) -> Iterator[ProdBroker]:
    """Mosquitto with mutual TLS and the ACL file; hub worker ``hub-w1`` is listed in the ACL.

    Issue client certificates with ``pki.issue_device_cert(prod_broker.ca, prod_broker.pki_dir, ...)``.
    """
    pki_dir = tmp_path / "pki"
    ca = pki.create_ca(pki_dir, "Test Fleet CA")
    server = pki.issue_server_cert(ca, pki_dir)
    acl_path = tmp_path / "acl"
    acl_path.write_text(render_acl(["w1"]), encoding="utf-8")
    values = {
        "cafile": str(ca.cert_path),
        "certfile": str(server.cert_path),
        "keyfile": str(server.key_path),
        "acl_file": str(acl_path),
    }
    proc = MosquittoProcess("prod.conf", tmp_path / "broker", values=values)
    proc.start()
    try:
        yield ProdBroker(proc, ca, pki_dir, acl_path)
    finally:
        proc.stop()
