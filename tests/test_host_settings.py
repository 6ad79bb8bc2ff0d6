"""Settings for running hub workers on several hosts: one leader, one certificate per worker ({index})."""

from __future__ import annotations

from pathlib import Path

from hub.config import load_settings
from hub.server.localhub import prepare_state
from hub.server.worker import HubWorker


def test_only_worker_zero_of_the_leading_host_leads_and_each_worker_gets_its_own_certificate(
    tmp_path: Path,
) -> None:
    base = prepare_state(load_settings(None, environ={}, state_dir=tmp_path / "hub"))
    for leader in (True, False):
        settings = load_settings(None, environ={}, state_dir=base.state_dir, operator_keys=base.operator_keys,
                                 leader=leader, broker_tls_cert=str(tmp_path / "hub-a-w{index}.crt"),
                                 broker_tls_key=str(tmp_path / "hub-a-w{index}.key"))
        workers = [HubWorker(settings, index) for index in range(3)]
        try:
            assert [w.is_leader for w in workers] == [leader, False, False]
            assert [w.transport.address.tls_cert for w in workers] == [
                str(tmp_path / f"hub-a-w{i}.crt") for i in range(3)]
            assert [w.transport.address.tls_key for w in workers] == [
                str(tmp_path / f"hub-a-w{i}.key") for i in range(3)]
        finally:
            for worker in workers:
                worker.store.close()
    assert load_settings(None, environ={"ATTEST_HUB_LEADER": "false"}).leader is False
