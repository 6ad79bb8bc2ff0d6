"""A benchmark stage: a broker, a hub state directory and a database with many enrolled devices.

Devices are inserted with one bulk insert per 20,000 rows directly into the
store (``attest-hub device enroll`` validates each key and writes an audit
entry per device, which is right for operators and too slow for a million).
Their keys repeat (``loadgen.KEY_POOL``), see ``bench/loadgen.py``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from bench import loadgen
from hub.broker.process import MosquittoProcess
from hub.config import Settings, load_settings
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.keys import public_pem
from hub.server.localhub import prepare_state
from hub.store import Store
from hub.store.db import DEVICES

BROKER_TEMPLATE = Path(__file__).resolve().parent / "broker.conf"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
_CHUNK = 20_000


@dataclass
class Stage:
    broker: MosquittoProcess
    settings: Settings
    database: str  # "sqlite" | "postgresql"
    enrolled: int
    pool: loadgen.KeyPool
    pg_name: str | None = None

    @property
    def hub_key_pem(self) -> bytes:
        return public_pem(load_hub_keys(self.settings).public_key).encode()

    @property
    def broker_address(self) -> str:
        return f"{self.broker.host}:{self.broker.port}"

    def verdict_count(self) -> int:
        store = Store(self.settings.effective_database_url)
        try:
            with store.reading() as conn:
                return store.count_verdicts(conn)
        finally:
            store.close()

    def close(self) -> None:
        self.broker.stop()
        if self.pg_name:
            _pg_admin(f"DROP DATABASE IF EXISTS {self.pg_name} WITH (FORCE)")


def _pg_admin(sql: str) -> None:
    import psycopg2  # type: ignore[import-untyped]

    conn = psycopg2.connect(PG_ADMIN_URL)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def open_stage(work: Path, database: str, enrolled: int, pool: loadgen.KeyPool) -> Stage:
    work.mkdir(parents=True, exist_ok=True)
    broker = MosquittoProcess(BROKER_TEMPLATE, work / "broker")
    broker.start()
    pg_name = None
    url = f"sqlite:///{work / 'hub.db'}"
    if database == "postgresql":
        pg_name = f"attest_bench_{uuid.uuid4().hex[:10]}"
        _pg_admin(f"CREATE DATABASE {pg_name}")
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + pg_name
    settings = load_settings(None, environ={}, state_dir=work / "hub", database_url=url, broker_host=broker.host,
                             broker_port=broker.port, epoch_period_s=3600.0)
    settings = prepare_state(settings)
    stage = Stage(broker, replace(settings), database, enrolled, pool, pg_name)
    enrol_bulk(settings.effective_database_url, enrolled, pool)
    return stage


def enrol_bulk(url: str, count: int, pool: loadgen.KeyPool) -> float:
    """Insert ``count`` devices; returns the seconds it took."""
    start = time.perf_counter()
    store = Store(url)
    now = time.time()
    try:
        for first in range(0, count, _CHUNK):
            rows = []
            for index in range(first, min(count, first + _CHUNK)):
                dev = loadgen.device_id(index)
                rows.append({"device_id": dev, "device_class": loadgen.device_class(index),
                             "public_key_pem": pool.public_pem[pool.for_device(index)], "key_version": 1,
                             "ueid": loadgen.ueid(dev), "status": "enrolled", "enrolled_at": now})
            with store.transaction() as conn:
                conn.execute(DEVICES.insert(), rows)
        if store.dialect == "postgresql":
            with store.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE device")
    finally:
        store.close()
    return time.perf_counter() - start
