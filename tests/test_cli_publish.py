"""Publishing through the real broker: running workers adopt a new manifest and a new policy without a restart,
and refuse a policy announcement not signed by the hub."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from device_sim.fleet import Fleet
from hub import wire
from hub.appraisal.operations import publish_once
from hub.broker.process import MosquittoProcess
from hub.cli.main import cli
from hub.crypto.cose import sign1
from hub.crypto.keys import generate_p256
from hub.envelope import Outgoing
from hub.server.localhub import DEMO_OPERATOR_KEY, MANIFESTS_DIR, LocalHub
from tests.e2e import HubEnv, make_env

pytestmark = pytest.mark.broker

OPERATOR_KEY = MANIFESTS_DIR / "keys" / "demo-operator.key.pem"


def run(env: HubEnv, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["--state-dir", str(env.settings.state_dir), "--broker", f"{env.broker.host}:{env.broker.port}",
              "--database-url", env.settings.effective_database_url, *args],
        env={"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY)}, catch_exceptions=False)


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_workers_adopt_published_manifest_and_policy_without_restart(broker: MosquittoProcess,
                                                                      tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 4, "honest:1")
    policy_v2 = tmp_path / "env-sensor-policy-2.toml"
    policy_v2.write_text((MANIFESTS_DIR / "env-sensor" / "policy.toml").read_text()
                         .replace("version = 1", "version = 2")
                         .replace("min_svn = 2", 'min_svn = 2\nallowed_versions = ["1.1.0"]'))
    with LocalHub(env.settings, count=2) as hub, Fleet(broker.host, broker.port, env.devices,
                                                         env.hub_key_pem) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        fleet.publish_round()
        assert fleet.flush(10)
        assert wait_until(lambda: all(env.device_status(d.device_id) == "trusted" for d in env.devices))

        published = run(env, "policy", "publish", str(policy_v2))
        assert published.exit_code == 0, published.output
        deprecated = run(env, "manifest", "deprecate", "1.2.0", "--class", "smart-meter", "--key", str(OPERATOR_KEY),
                         "--out", str(tmp_path / "smart-meter-2.cose"), "--publish")
        assert deprecated.exit_code == 0, deprecated.output
        assert wait_until(lambda: all(w.references.policy("env-sensor").version == 2
                                      and (m := w.references.manifest("smart-meter")) is not None and m.sequence == 2
                                      for w in hub.workers)), "every worker adopts both, no restart"

        fleet.publish_round()
        assert fleet.flush(10)
        assert wait_until(lambda: all(env.device_status(d.device_id) != "trusted" for d in env.devices))
    for device in env.devices:
        latest = env.verdicts(device.device_id)[0]
        if device.device_class == "env-sensor":
            assert latest["policy_ref"] == "env-sensor@2" and latest["status"] == "contraindicated"
            assert env.device_status(device.device_id) == "quarantined"
            assert "not allowed by policy env-sensor@2" in latest["problems"]
        else:
            assert latest["manifest_ref"] == "smart-meter#2" and latest["status"] == "warning"
            assert env.device_status(device.device_id) == "warning"
            assert "deprecated" in latest["problems"]


def test_a_policy_announcement_not_signed_by_the_hub_is_refused(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 2, "honest:1")
    source = (MANIFESTS_DIR / "env-sensor" / "policy.toml").read_text().replace("version = 1", "version = 9")
    forged = sign1(source.encode(), generate_p256(), kid=env.keys.kid, content_type=wire.POLICY_PROFILE)
    unsigned = source.encode()
    with LocalHub(env.settings) as hub:
        for payload in (forged, unsigned):
            publish_once(env.settings, [Outgoing(wire.policy_topic("env-sensor"), payload, retain=True)], "intruder")
        good = source.replace("version = 9", "version = 3")
        Path(tmp_path / "p3.toml").write_text(good)
        assert run(env, "policy", "publish", str(tmp_path / "p3.toml")).exit_code == 0
        assert wait_until(lambda: hub.workers[0].references.policy("env-sensor").version == 3)
        assert hub.workers[0].references.policy("env-sensor").version == 3, "version 9 was never adopted"
    store = env.store()
    try:
        with store.reading() as conn:
            assert [p["version"] for p in store.policy_history(conn, "env-sensor")] == [1, 3]
    finally:
        store.close()


def test_quarantine_with_the_broker_down_says_recorded_not_sent_and_resend_sends_it(broker: MosquittoProcess,
                                                                                     tmp_path: Path) -> None:
    from hub.broker.process import free_port
    from tests.e2e import Observer

    env = make_env(broker, tmp_path, 1, "honest:1")
    device_id = env.devices[0].device_id
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = CliRunner().invoke(
        cli, ["--state-dir", str(env.settings.state_dir), "--broker", down, "--database-url",
              env.settings.effective_database_url, "device", "quarantine", device_id, "--reason", "RMA", "--json"],
        env={"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY)}, catch_exceptions=False)
    assert result.exit_code == 3, result.output
    error = json.loads(result.stdout)
    assert error["sent"] is False and error["status"] == "quarantined" and error["broker"] == down
    assert "recorded in the database and the audit log" in error["error"]
    assert error["retry"] == f"attest-hub device resend {device_id}"
    assert env.device_status(device_id) == "quarantined"

    topic = wire.device_topic(device_id, wire.COMMAND)
    observer = Observer(broker.host, broker.port, (topic,)).start()
    try:
        sent = run(env, "device", "resend", device_id)
        assert sent.exit_code == 0, sent.output
        assert f"{broker.host}:{broker.port}" in sent.output and "quarantine command" in sent.output
        assert wait_until(lambda: bool(observer.on(topic)))
    finally:
        observer.stop()
    assert run(env, "device", "resend", "nobody").exit_code == 1
