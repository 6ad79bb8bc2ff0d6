"""Bounded storage on PostgreSQL: the rejection counts' upsert, and a prune whose audit chain still verifies."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from device_sim import firmware
from device_sim.device import SimDevice
from hub import wire
from hub.appraisal.operations import Enrolment
from hub.appraisal.pipeline import Pipeline
from hub.appraisal.retention import chain_starts, prune
from hub.audit import verify_chain
from hub.config import load_settings
from hub.crypto.freshness import epoch_nonce
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import open_store
from hub.envelope import Incoming
from hub.reference.values import References
from hub.schemes import SchemeRegistry, default_schemes
from hub.server.localhub import enrol_all, prepare_state
from hub.store.rejections import total_rejections
from tests.e2e import fresh_pg_database

pytestmark = pytest.mark.postgres
A = "smart-meter-0001"


def test_counts_budget_and_prune_on_postgresql(tmp_path: Path) -> None:
    url = fresh_pg_database()
    settings = prepare_state(load_settings(None, environ={}, state_dir=tmp_path / "hub", database_url=url))
    device = SimDevice(A, firmware.SMART_METER, seed="storage-pg")
    enrol_all(settings, [Enrolment(A, device.device_class, device.public_key_pem.decode(), device.ueid)])
    keys = load_hub_keys(settings)
    store = open_store(settings)
    try:
        with store.transaction() as conn:
            store.set_state(conn, "epoch", "5")
        references = References(keys.operator_keys)
        with store.reading() as conn:
            assert references.load(store.latest_manifests(conn), store.latest_policies(conn)) == []
        now = time.time() - 120
        pipeline = Pipeline(store, SchemeRegistry(default_schemes()), keys, references, clock=lambda: now)
        topic = wire.device_topic(A, wire.EVIDENCE)
        pipeline.process([Incoming(topic, device.make_evidence(epoch_nonce(keys.nonce_secret, 5)),
                                   wire.FIRMWARE_MEDIA_TYPE)])
        for start in (0, 15):  # two batches add to one minute's row
            pipeline.process([Incoming(topic, b"junk%d" % i, wire.FIRMWARE_MEDIA_TYPE)
                              for i in range(start, start + 15)])
        with store.reading() as conn:
            assert total_rejections(conn, A) == 30
            assert len(store.verdict_history(conn, A, limit=100)) == 1 + 20
            garbage = [v for v in store.verdict_history(conn, A, limit=100) if v["status"] == "rejected"]
        assert all(bytes(v["evidence"]) == b"" and len(bytes(v["evidence_sha256"])) == 32 for v in garbage)
        result = prune(store, keys, tmp_path / "archive", time.time())
        assert result.verdicts == 20 and result.rejection_counts == 1 and result.audit > 0
        with store.reading() as conn:
            rows = store.audit_rows(conn)
            starts, problems = chain_starts(store, conn, keys.public_key, rows)
            head = store.get_state(conn, "audit_head")
            assert total_rejections(conn, A) == 0
        assert problems == [] and verify_chain(rows, starts[""][1], head, starts[""][0]) == []
    finally:
        store.close()
