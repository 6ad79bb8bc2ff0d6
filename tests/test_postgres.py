"""PostgreSQL as the store: alembic migrations, concurrent workers on the same devices, a full run through Mosquitto."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlmodel import SQLModel

from bench import loadgen
from bench.stage import enrol_bulk
from device_sim.commands import Epoch
from device_sim.fleet import Fleet
from device_sim.records import Profile
from hub import wire
from hub.appraisal.pipeline import Pipeline
from hub.broker.process import MosquittoProcess
from hub.cli.db import db
from hub.cli.main import cli
from hub.config import load_settings
from hub.crypto.freshness import epoch_nonce
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import open_store
from hub.envelope import Incoming
from hub.reference.values import References
from hub.schemes import SchemeRegistry, default_schemes
from hub.server.localhub import LocalHub, prepare_state
from hub.store import Store
from hub.store.migrate import current_revision, head_revision, upgrade
from tests.e2e import fresh_pg_database, make_env
from tests.helpers import new_store

pytestmark = pytest.mark.postgres


def test_init_migrates_a_new_postgresql_database_to_the_models_schema(tmp_path: Path) -> None:
    store = new_store(tmp_path / "hub", fresh_pg_database())
    try:
        assert current_revision(store.engine) == head_revision()
        with store.engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert diffs == [], f"models and migrations disagree (add a migration): {diffs}"
    finally:
        store.close()


def test_db_upgrade_command_reports_the_revision(tmp_path: Path) -> None:
    url = fresh_pg_database()
    runner = CliRunner()
    group = cli
    group.add_command(db)
    first = runner.invoke(group, ["--state-dir", str(tmp_path), "--database-url", url, "db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert f"schema created at revision {head_revision()} (the database was empty)" in first.output
    again = runner.invoke(group, ["--state-dir", str(tmp_path), "--database-url", url, "db", "current", "--json"])
    assert again.exit_code == 0 and f'"current": "{head_revision()}"' in again.output


def test_db_upgrade_fails_clearly_when_the_server_is_unreachable(tmp_path: Path) -> None:
    cli.add_command(db)
    result = CliRunner().invoke(cli, ["--state-dir", str(tmp_path), "--database-url",
                                      "postgresql://postgres@127.0.0.1:1/none", "db", "upgrade"])
    assert result.exit_code == 3


def test_a_sqlite_database_made_from_the_models_is_adopted_by_the_migrations(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'hub.db'}", schema=False)
    SQLModel.metadata.create_all(store.engine)  # as releases before migrations made it: no alembic_version
    try:
        assert current_revision(store.engine) is None
        assert upgrade(store.engine) == head_revision()
    finally:
        store.close()


def _pg_pipeline_env(tmp_path: Path, devices: int) -> tuple[Store, list[Pipeline], loadgen.EvidenceFactory]:
    url = fresh_pg_database()
    settings = prepare_state(load_settings(None, environ={}, state_dir=tmp_path / "hub", database_url=url))
    pool = loadgen.KeyPool.make(4)
    enrol_bulk(url, devices, pool)
    keys = load_hub_keys(settings)
    store = open_store(settings)
    with store.transaction() as conn:
        store.set_state(conn, "epoch", "5")
    pipelines = []
    for _ in range(2):  # two workers: each its own store (connection pool), as in separate processes
        worker_store = open_store(settings)
        references = References(keys.operator_keys)
        with worker_store.reading() as conn:
            assert references.load(worker_store.latest_manifests(conn), worker_store.latest_policies(conn)) == []
        pipelines.append(Pipeline(worker_store, SchemeRegistry(default_schemes()), keys, references))
    return store, pipelines, loadgen.EvidenceFactory(pool, Epoch(5, epoch_nonce(keys.nonce_secret, 5), 0))


def _incoming(item: loadgen.Evidence) -> Incoming:
    return Incoming(wire.device_topic(item.device_id, wire.EVIDENCE), item.payload, wire.FIRMWARE_MEDIA_TYPE)


def test_two_workers_deciding_the_same_devices_at_once_neither_deadlock_nor_double_count(tmp_path: Path) -> None:
    store, (first, second), factory = _pg_pipeline_env(tmp_path, 40)
    rounds = [[_incoming(e) for e in factory.batch(range(40))] for _ in range(3)]
    errors: list[BaseException] = []

    def work(pipeline: Pipeline, batches: list[list[Incoming]]) -> None:
        try:
            for batch in batches:
                pipeline.process(batch)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    # The same messages (redelivered to the other worker), one side in reverse order: opposite lock orders.
    threads = [threading.Thread(target=work, args=(first, rounds)),
               threading.Thread(target=work, args=(second, [list(reversed(b)) for b in rounds]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with store.reading() as conn:
        assert store.count_verdicts(conn) == 120, "each evidence decided exactly once across both workers"
        devices = store.devices(conn, [loadgen.device_id(i) for i in range(40)])
    assert {(d.bootcount, d.seq) for d in devices.values()} == {(1, 3)}
    store.close()


def test_duplicate_evidence_on_postgresql_gets_no_second_verdict(tmp_path: Path) -> None:
    store, (pipeline, _), factory = _pg_pipeline_env(tmp_path, 2)
    item = _incoming(factory.make(0))
    assert [d.status for d in pipeline.process([item]).decisions] == ["affirming"]
    assert [d.status for d in pipeline.process([item]).decisions] == ["duplicate"]
    with store.reading() as conn:
        assert store.count_verdicts(conn) == 1
    store.close()


def test_late_evidence_from_another_worker_is_judged_and_its_window_kept_on_postgresql(tmp_path: Path) -> None:
    """Worker one commits a device's newer evidence; worker two, which last saw the device before it, gets the
    older piece: decided again under the lock, it is late (within the anti-replay window), and the window
    (bytea) is stored with the mark."""
    store, (first, second), factory = _pg_pipeline_env(tmp_path, 1)
    one, two, three = (_incoming(factory.make(0)) for _ in range(3))
    assert [d.action for d in second.process([one]).decisions] == ["affirm"]  # worker two caches the row at 1
    assert [d.action for d in first.process([three]).decisions] == ["affirm"]
    assert [(d.status, d.action) for d in second.process([two]).decisions] == [("affirming", "late")]
    with store.reading() as conn:
        device = store.devices(conn, [loadgen.device_id(0)])[loadgen.device_id(0)]
    assert (device.bootcount, device.seq) == (1, 3) and device.seq_window == (0b111).to_bytes(8, "little")
    assert [d.reason for d in second.process([_incoming(factory.make(0))]).decisions] == [""]
    store.close()


@pytest.mark.broker
def test_two_workers_on_postgresql_through_mosquitto(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 6, "honest:4,tampered:1,forged:1", database_url=fresh_pg_database())
    assert env.settings.effective_database_url.startswith("postgresql")
    with LocalHub(replace(env.settings), count=2), Fleet(broker.host, broker.port, env.devices,
                                                         env.hub_key_pem) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        for _ in range(3):
            fleet.publish_round()
            time.sleep(0.3)
        assert fleet.flush(10)
        tampered = next(d for d in env.devices if d.profile is Profile.TAMPERED)
        assert fleet.wait_for(lambda: tampered.quarantined, 15)
        deadline = time.monotonic() + 15
        while len(env.verdicts()) < 18 and time.monotonic() < deadline:
            time.sleep(0.1)
    verdicts = env.verdicts()
    assert len(verdicts) == 18
    statuses = {d.device_id: env.device_status(d.device_id) for d in env.devices}
    for device in env.devices:
        expected = {Profile.HONEST: "trusted", Profile.TAMPERED: "quarantined"}.get(device.profile)
        if expected:
            assert statuses[device.device_id] == expected, device
    forged = next(d for d in env.devices if d.profile is Profile.FORGED)
    assert {v["status"] for v in env.verdicts(forged.device_id)} == {"rejected"}
