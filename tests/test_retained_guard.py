"""The leader puts back its retained announcements when another client replaces or deletes them.

On a broker whose ACL lets any client write ``hub/#`` (development brokers), a second hub's key or anyone
can overwrite ``hub/epoch``: devices then find no epoch they can verify and the fleet goes silent. Unit tests
of the guard's rules, then the whole loop through a real Mosquitto."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from e2e import make_env

from hub import wire
from hub.appraisal.messages import epoch_message
from hub.appraisal.operations import publish_once
from hub.broker.process import MosquittoProcess
from hub.config import load_settings
from hub.crypto.hubkeys import HubKeys, load_hub_keys
from hub.crypto.keys import generate_p256
from hub.envelope import Outgoing
from hub.server.announced import announced
from hub.server.localhub import LocalHub, prepare_state
from hub.server.retained import RetainedGuard


def _epoch(keys: HubKeys, epoch: int, key: object = None) -> bytes:
    return epoch_message(epoch, bytes(32), 1_700_000_000, key or keys.signing_key, keys.kid)  # type: ignore[arg-type]


@pytest.fixture
def keys(tmp_path: Path) -> HubKeys:
    return load_hub_keys(prepare_state(load_settings(None, environ={}, state_dir=tmp_path / "hub")))


def test_another_key_an_empty_message_or_an_older_epoch_is_put_back(keys: HubKeys) -> None:
    guard = RetainedGuard(keys.public_key, min_interval_s=5.0)
    ours = _epoch(keys, 7)
    guard.published(wire.EPOCH_TOPIC, ours, 7, at=100.0)
    for intruder in (_epoch(keys, 7, generate_p256()), b"", b"\x00garbage", _epoch(keys, 6)):
        assert guard.observe(wire.EPOCH_TOPIC, intruder, received_at=101.0)
    assert guard.replaced == {wire.EPOCH_TOPIC: 4}
    assert guard.due(101.0) == [Outgoing(wire.EPOCH_TOPIC, ours, retain=True)]
    assert guard.due(101.5) == []


def test_its_own_latest_or_a_newer_one_of_its_key_is_left_alone(keys: HubKeys) -> None:
    guard = RetainedGuard(keys.public_key)
    ours = _epoch(keys, 7)
    guard.published(wire.EPOCH_TOPIC, ours, 7, at=100.0)
    assert not guard.observe(wire.EPOCH_TOPIC, ours, received_at=101.0)
    assert not guard.observe(wire.EPOCH_TOPIC, _epoch(keys, 8), received_at=101.0)  # e.g. accept-restore
    # delivered at subscription, before this run's first announcement replaced it at the broker
    assert not guard.observe(wire.EPOCH_TOPIC, _epoch(keys, 3), received_at=99.0)
    assert not guard.observe(wire.GENERATION_TOPIC, b"", received_at=101.0)  # nothing published there yet
    assert guard.due(101.0) == [] and guard.replaced == {}


def test_re_publication_is_limited_per_topic_and_a_late_replacement_is_put_right_later(keys: HubKeys) -> None:
    """Two hubs with different keys on one broker must not overwrite each other at network speed."""
    guard = RetainedGuard(keys.public_key, min_interval_s=5.0)
    ours = _epoch(keys, 7)
    guard.published(wire.EPOCH_TOPIC, ours, 7, at=0.0)
    foreign = _epoch(keys, 9, generate_p256())
    assert guard.observe(wire.EPOCH_TOPIC, foreign, received_at=10.0)
    assert len(guard.due(10.0)) == 1
    assert guard.observe(wire.EPOCH_TOPIC, foreign, received_at=11.0)
    assert guard.due(12.0) == []
    assert guard.due(15.0) == [Outgoing(wire.EPOCH_TOPIC, ours, retain=True)]
    guard.published(wire.EPOCH_TOPIC, _epoch(keys, 8), 8, at=16.0)  # the next epoch supersedes what was pending
    assert guard.due(30.0) == []


@pytest.mark.broker
def test_a_replaced_retained_epoch_is_put_back_through_the_broker(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 1, "honest:1")
    with LocalHub(env.settings) as hub:
        deadline = time.monotonic() + 15
        while announced(env.settings, env.keys.public_key).epoch is None:
            assert time.monotonic() < deadline, "the hub announced no epoch"
            time.sleep(0.1)
        epoch = announced(env.settings, env.keys.public_key).epoch
        assert epoch is not None
        for intruder in (_epoch(env.keys, epoch + 1, generate_p256()), b""):  # another key; a deletion
            publish_once(env.settings, [Outgoing(wire.EPOCH_TOPIC, intruder, retain=True)], "intruder")
            deadline = time.monotonic() + 15
            while announced(env.settings, env.keys.public_key).epoch != epoch:
                assert time.monotonic() < deadline, f"the retained epoch stayed replaced by {intruder[:8]!r}"
                time.sleep(0.2)
            time.sleep(5.5)  # the guard re-publishes at most once per 5 s per topic
        leader = hub.workers[0]
        assert leader.guard.replaced.get(wire.EPOCH_TOPIC, 0) >= 2
        assert leader.metrics.retained_replaced.labels(topic=wire.EPOCH_TOPIC)._value.get() >= 2
