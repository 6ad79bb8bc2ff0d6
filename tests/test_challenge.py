"""On-demand challenge-response through the broker: single use, device-bound, echoed in the result."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from device_sim.fleet import Fleet
from hub import wire
from hub.appraisal.challenge import challenge_and_wait, make_challenge
from hub.appraisal.operations import publish_once
from hub.broker.process import MosquittoProcess
from hub.cli.main import cli
from hub.server.localhub import LocalHub
from tests.e2e import Observer, make_env, signed_payload

pytestmark = pytest.mark.broker


def test_challenged_device_answers_and_the_result_echoes_the_nonce(broker: MosquittoProcess,
                                                                   tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 2, "honest:1,tampered:1")
    honest, tampered = env.devices
    with LocalHub(env.settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        store = env.store()
        good = challenge_and_wait(env.settings, store, env.keys, honest.device_id, 10)
        bad = challenge_and_wait(env.settings, store, env.keys, tampered.device_id, 10)
        store.close()
        assert fleet.wait_for(lambda: tampered.quarantined, 10)
    assert good.answered and good.status == 2 and good.problems == ()
    assert bad.answered and bad.status == 96 and bad.action == "quarantine"
    assert good.nonce != bad.nonce and good.nonce[:1] == wire.NONCE_CHALLENGE_PREFIX


def test_a_challenge_nonce_is_accepted_once_and_only_from_its_device(broker: MosquittoProcess,
                                                                    tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 2, "honest:1")
    first, second = env.devices
    topics = tuple(wire.device_topic(d.device_id, wire.RESULT) for d in env.devices)
    observer = Observer(broker.host, broker.port, topics).start()
    with LocalHub(env.settings) as hub:
        time.sleep(0.3)  # the leader has published epoch 1
        store = env.store()
        _command, nonce = make_challenge(store, env.keys, first.device_id, 60)
        store.close()
        answers = [
            wire.device_topic(first.device_id, wire.EVIDENCE), first.make_evidence(nonce),
            wire.device_topic(first.device_id, wire.EVIDENCE), first.make_evidence(nonce),  # reused
            wire.device_topic(second.device_id, wire.EVIDENCE), second.make_evidence(nonce),  # stolen
        ]
        from hub.envelope import Outgoing

        publish_once(env.settings, [Outgoing(answers[i], answers[i + 1], content_type=wire.FIRMWARE_MEDIA_TYPE)
                                    for i in range(0, 6, 2)], "attacker")
        assert observer.wait(lambda: len(observer.messages) >= 3)
        assert hub.workers[0].health.processed >= 3
    observer.stop()
    first_results = [signed_payload(m.payload, env.keys) for m in observer.on(topics[0])]
    second_results = [signed_payload(m.payload, env.keys) for m in observer.on(topics[1])]
    assert [r[wire.SUBMODS]["firmware"][wire.EAR_STATUS] for r in first_results] == [2, 96]
    assert "nonce-reused" in first_results[1][wire.RES_PROBLEMS][0]
    assert "bad-nonce" in second_results[0][wire.RES_PROBLEMS][0]


def test_cli_challenge_exit_codes(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 3, "honest:2,tampered:1")
    from device_sim.records import Profile

    honest, silent = [d for d in env.devices if d.profile is Profile.HONEST]
    tampered = next(d for d in env.devices if d.profile is Profile.TAMPERED)
    base = ["--state-dir", str(env.settings.state_dir), "--broker", f"{broker.host}:{broker.port}",
            "--database-url", env.settings.effective_database_url]
    runner = CliRunner()
    with LocalHub(env.settings), Fleet(broker.host, broker.port, [honest, tampered], env.hub_key_pem) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        ok = runner.invoke(cli, [*base, "device", "challenge", honest.device_id, "--wait", "10", "--json"])
        bad = runner.invoke(cli, [*base, "device", "challenge", tampered.device_id, "--wait", "10"])
        unknown = runner.invoke(cli, [*base, "device", "challenge", "nobody-0001", "--wait", "2"])
        no_answer = runner.invoke(cli, [*base, "device", "challenge", silent.device_id, "--wait", "1"])
    assert ok.exit_code == 0, ok.output
    assert '"answered": true' in ok.output
    assert bad.exit_code == 1, bad.output
    assert unknown.exit_code == 1 and "unknown device" in unknown.output
    assert no_answer.exit_code == 4 and "no answer" in no_answer.output
