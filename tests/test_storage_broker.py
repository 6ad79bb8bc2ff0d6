"""Bounded storage through a real Mosquitto: a hostile enrolled device and random device ids.

The hub (LocalHub) runs against the development broker (no ACLs), and a raw client publishes
garbage on an enrolled device's topic and evidence on topics of ids that are not enrolled.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sim.fleet import Fleet
from hub import wire
from hub.broker.process import MosquittoProcess
from hub.server.localhub import LocalHub
from hub.store import Store
from hub.store.rejections import total_rejections
from tests.e2e import HubEnv, Observer, make_env

pytestmark = pytest.mark.broker
WAIT = 20.0


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Publisher:
    """A raw MQTT v5 client (the development broker lets it publish anywhere)."""

    def __init__(self, broker: MosquittoProcess) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hostile", protocol=MQTTProtocolVersion.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, messages: list[tuple[str, bytes]]) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = wire.FIRMWARE_MEDIA_TYPE
        infos = [self.client.publish(topic, payload, qos=1, properties=props) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(20)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Live:
    env: HubEnv
    hub: LocalHub
    store: Store
    publisher: Publisher
    observer: Observer

    def count(self, table: str) -> int:
        with self.store.reading() as conn:
            return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())

    def processed(self) -> int:
        return sum(w.health.processed for w in self.hub.workers)


@pytest.fixture
def live(broker: MosquittoProcess, tmp_path: Path) -> Iterator[Live]:
    env = make_env(broker, tmp_path, 2, "honest:1", epoch_period_s=600.0, rejected_rows_per_min=5,
                   device_rate_per_s=1000.0, device_burst=1000)
    hub = LocalHub(env.settings).start()
    store = env.store()
    observer = Observer(broker.host, broker.port, (f"{wire.FLEET_ROOT}/+/{wire.RESULT}",)).start()
    publisher = Publisher(broker)
    try:
        assert wait_until(lambda: hub.workers[0].health.broker_connected)
        yield Live(env, hub, store, publisher, observer)
    finally:
        publisher.close()
        observer.stop()
        hub.stop()
        store.close()
    assert hub.errors == []


def test_hostile_enrolled_device_garbage_is_hashed_and_budgeted(live: Live) -> None:
    target = live.env.devices[0].device_id
    garbage = [b"\xd2" + bytes([i]) * 40_000 for i in range(30)]  # over the 16 KiB limit, distinct
    live.publisher.send([(wire.device_topic(target, wire.EVIDENCE), g) for g in garbage])
    assert wait_until(lambda: live.processed() >= 30), live.processed()
    rows = live.env.verdicts(target)
    assert len(rows) == 5  # the per-minute budget; the other 25 only counted
    assert all(r["evidence"] == b"" and r["evidence_length"] == 40_001 for r in rows)
    assert {bytes(r["evidence_sha256"]) for r in rows} <= {hashlib.sha256(g).digest() for g in garbage}
    with live.store.reading() as conn:
        assert total_rejections(conn, target) == 30
    results = wire.device_topic(target, wire.RESULT)  # handed to paho when counted, not yet at the observer
    assert live.observer.wait(lambda: len(live.observer.on(results)) >= 5), live.observer.on(results)
    time.sleep(0.3)  # and no more than the budget follow
    assert len(live.observer.on(results)) == 5


def test_unknown_device_ids_are_counted_not_stored(live: Live) -> None:
    verdicts, audit = live.count("verdict"), live.count("audit")
    ids = [f"random-{i:05d}" for i in range(200)]
    live.publisher.send([(wire.device_topic(i, wire.EVIDENCE), b"\xd2\x84" + i.encode()) for i in ids])
    assert wait_until(lambda: live.processed() >= 200), live.processed()
    assert live.count("verdict") == verdicts and live.count("audit") == audit
    assert live.count("rejection_count") == 0
    metric = sum(w.metrics.registry.get_sample_value("attest_unknown_device_messages_total") or 0
                 for w in live.hub.workers)
    assert metric == 200
    time.sleep(0.5)  # nothing signed or published for them
    assert not [m for m in live.observer.messages if m.topic.split("/")[1].startswith("random-")]


def test_honest_device_still_affirmed_beside_a_hostile_one(live: Live) -> None:
    hostile, honest = live.env.devices
    live.publisher.send([(wire.device_topic(hostile.device_id, wire.EVIDENCE), b"junk%d" % i) for i in range(20)])
    with Fleet(live.env.broker.host, live.env.broker.port, [honest], live.env.hub_key_pem) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        fleet.publish_round()
        assert fleet.flush(10)
        assert wait_until(lambda: len(live.env.verdicts(honest.device_id)) == 1)
    [row] = live.env.verdicts(honest.device_id)
    assert row["status"] == "affirming" and row["evidence"] and row["evidence_sha256"] is None


def test_leader_prunes_on_schedule_while_the_fleet_attests(broker: MosquittoProcess, tmp_path: Path) -> None:
    """Retention in the running hub: the leader exports and prunes while evidence keeps arriving, and the
    audit chain (with its signed checkpoint) and the exported files still verify."""
    from click.testing import CliRunner

    from hub.cli.main import cli

    env = make_env(broker, tmp_path, 3, "honest:1", epoch_period_s=600.0, retention_days=2.0 / 86400,
                   retention_interval_s=0.5)
    with LocalHub(env.settings) as hub, Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        for _ in range(3):
            fleet.publish_round()
            assert fleet.flush(10)
            time.sleep(1.0)
        assert wait_until(lambda: any(env.settings.archive_dir.glob("audit-*.jsonl")))
        fleet.publish_round()
        assert fleet.flush(10)
        assert wait_until(lambda: hub.workers[0].health.processed >= 12)
        time.sleep(3.0)  # at least one more prune with the last round older than the cut-off
    assert hub.errors == []
    verdicts = env.verdicts()
    assert len(verdicts) == 3, verdicts  # each device's latest affirming verdict is kept
    exported = [json.loads(line) for f in env.settings.archive_dir.glob("verdicts-*.jsonl")
                for line in f.read_text().splitlines()]
    assert len(exported) == 9 and all(v["status"] == "affirming" for v in exported)
    runner = CliRunner()
    hub_args = ["--state-dir", str(env.settings.state_dir), "--database-url", env.settings.effective_database_url]
    result = runner.invoke(cli, [*hub_args, "audit", "verify"])
    assert result.exit_code == 0, result.output
    joined = tmp_path / "archive.jsonl"
    joined.write_text("".join(f.read_text() for f in sorted(env.settings.archive_dir.glob("audit-*.jsonl"))))
    result = runner.invoke(cli, [*hub_args, "audit", "verify", "--file", str(joined)])
    assert result.exit_code == 0, result.output


def test_hostile_device_gets_a_finding_and_warning(broker: MosquittoProcess, tmp_path: Path) -> None:
    """40 garbage messages in a minute on an enrolled device's topic (policy limit 30): the leader opens a
    rejection-rate finding and the device, which never attested, goes from enrolled to warning."""
    env = make_env(broker, tmp_path, 2, "honest:1", epoch_period_s=600.0, anomaly_interval_s=0.3,
                   anomaly_settle_s=0.0, device_rate_per_s=1000.0, device_burst=1000)
    hostile = env.devices[0].device_id
    with LocalHub(env.settings) as hub:
        assert wait_until(lambda: hub.workers[0].health.broker_connected)
        publisher = Publisher(broker)
        try:
            publisher.send([(wire.device_topic(hostile, wire.EVIDENCE), b"junk%d" % i) for i in range(40)])
        finally:
            publisher.close()
        assert wait_until(lambda: env.device_status(hostile) == "warning"), env.device_status(hostile)
        gauge = hub.workers[0].metrics.registry.get_sample_value("attest_anomaly_findings",
                                                                  {"kind": "rejection-rate"})
        assert wait_until(lambda: (hub.workers[0].metrics.registry.get_sample_value(
            "attest_anomaly_findings", {"kind": "rejection-rate"}) or 0) == 1), gauge
    assert hub.errors == []
    assert env.device_status(env.devices[1].device_id) == "enrolled"


def test_a_flood_over_the_rate_limit_and_random_ids_log_a_few_lines(broker: MosquittoProcess, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """300 messages over one device's rate limit and 300 random ids: a handful of log lines, not 600."""
    import logging

    env = make_env(broker, tmp_path, 1, "honest:1", epoch_period_s=600.0, device_rate_per_s=1.0, device_burst=5)
    target = env.devices[0].device_id
    with caplog.at_level(logging.WARNING), LocalHub(env.settings) as hub:
        assert wait_until(lambda: hub.workers[0].health.broker_connected)
        publisher = Publisher(broker)
        try:
            publisher.send([(wire.device_topic(target, wire.EVIDENCE), b"junk%d" % i) for i in range(300)]
                           + [(wire.device_topic(f"random-{i}", wire.EVIDENCE), b"x") for i in range(300)])
        finally:
            publisher.close()
        assert wait_until(lambda: hub.workers[0].health.processed >= 600), hub.workers[0].health.processed
    dropped = hub.workers[0].metrics.registry.get_sample_value("attest_messages_dropped_total",
                                                               {"why": "rate limit exceeded"})
    assert dropped is not None and dropped >= 290
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("hub.")]
    assert 1 <= sum("not appraised" in line for line in lines) <= 2, lines
    assert 1 <= sum("not enrolled" in line for line in lines) <= 2, lines
    assert len(lines) < 20, lines
