"""A worker's per-device memory is bounded by settings: the committed-row (anchor) cache, the parsed-key cache and
the rate limiter keep at most their configured number of devices, and verdicts do not depend on the bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import HubEnv, env_fixture, incoming

from hub.appraisal.pipeline import Pipeline, _bounded_put
from hub.appraisal.ratelimit import RateLimiter
from hub.config import ConfigError, load_settings
from hub.schemes import SchemeRegistry, default_schemes
from hub.store.db import DeviceRecord

DEVICES = [f"smart-meter-{i:04d}" for i in range(1, 7)]

env = env_fixture(*DEVICES)


def _pipeline(env: HubEnv, anchors: int, keys: int) -> Pipeline:
    return Pipeline(env.store, SchemeRegistry(default_schemes()), env.keys, env.references,
                    rate_limiter=RateLimiter(20.0, 40, 4), anchor_cache_max=anchors, key_cache_max=keys)


def test_caches_stay_within_their_bounds_and_verdicts_do_not_change(env: HubEnv) -> None:
    assert len({env.devices[d].public_key_pem for d in DEVICES}) == len(DEVICES)  # one key each: the cache fills
    pipeline = _pipeline(env, anchors=3, keys=2)
    for round_ in range(2):  # the second round meets devices dropped from the caches and devices still in them
        outcome = pipeline.process([incoming(d, env.evidence(d)) for d in DEVICES])
        assert [d.status for d in outcome.decisions] == ["affirming"] * len(DEVICES)
        assert len(pipeline._committed) == 3 and len(pipeline._key_cache) == 2
        assert pipeline.rate_limiter is not None and len(pipeline.rate_limiter._buckets) == 4
        if round_ == 0:
            assert set(pipeline._committed) == set(DEVICES[-3:])  # the last inserted are kept
    assert all(env.device(d).seq == 2 for d in DEVICES)


def test_zero_turns_a_cache_off(env: HubEnv) -> None:
    pipeline = _pipeline(env, anchors=0, keys=0)
    outcome = pipeline.process([incoming(d, env.evidence(d)) for d in DEVICES[:2]])
    assert [d.status for d in outcome.decisions] == ["affirming", "affirming"]
    assert pipeline._committed == {} and pipeline._key_cache == {}


def test_bounded_put_drops_the_oldest_inserted_first() -> None:
    cache: dict[str, int] = {}
    for i, key in enumerate("abcde"):
        _bounded_put(cache, key, i, 3)
    assert cache == {"c": 2, "d": 3, "e": 4}
    _bounded_put(cache, "c", 9, 3)  # an update keeps the size
    assert cache == {"c": 9, "d": 3, "e": 4}


def test_bounds_are_settings_and_negative_ones_are_refused(tmp_path: Path) -> None:
    settings = load_settings(None, environ={"ATTEST_HUB_KEY_CACHE_MAX": "500"}, state_dir=tmp_path)
    assert (settings.key_cache_max, settings.anchor_cache_max, settings.rate_limit_devices_max) == (500, 100_000,
                                                                                                    200_000)
    with pytest.raises(ConfigError, match="key_cache_max"):
        load_settings(None, environ={"ATTEST_HUB_KEY_CACHE_MAX": "-1"}, state_dir=tmp_path)
    with pytest.raises(ConfigError, match="rate_limit_devices_max"):
        load_settings(None, environ={"ATTEST_HUB_RATE_LIMIT_DEVICES_MAX": "0"}, state_dir=tmp_path)


def test_a_refilled_bucket_is_forgotten_and_a_forgotten_device_starts_full() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=2)
    assert limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.5)
    assert set(limiter._buckets) == {"a", "b"}  # neither has refilled yet
    assert limiter.allow("c", 1.2)  # "a" has had 1.2 s: its bucket (1 token + 1.2) is full again, not "b"
    assert set(limiter._buckets) == {"b", "c"}
    assert [limiter.allow("a", 1.2) for _ in range(3)] == [True, True, False]  # as if it had been kept


def test_a_flooding_device_stays_limited_while_idle_ones_are_forgotten() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=2)
    allowed = []
    for step in range(40):  # the flooder sends 10 per second; a new idle device each 0.1 s
        now = step / 10
        allowed.append(limiter.allow("flooder", now))
        limiter.allow(f"idle-{step}", now)
    assert sum(allowed) == 2 + 3  # the burst, then one per second for the 3.9 s that followed
    assert len(limiter._buckets) <= 2 / 1.0 * 10 + 2  # only devices seen within burst / rate seconds


def test_cached_rows_share_one_copy_of_a_class_and_a_version(env: HubEnv) -> None:
    pipeline = _pipeline(env, anchors=10, keys=10)
    outcome = pipeline.process([incoming(d, env.evidence(d)) for d in DEVICES[:3]])
    assert [d.status for d in outcome.decisions] == ["affirming"] * 3
    rows = [DeviceRecord(*pipeline._committed[d]) for d in DEVICES[:3]]  # type: ignore[arg-type]
    assert len({r.device_class for r in rows}) == 1 and len({id(r.device_class) for r in rows}) == 1
    assert rows[0].firmware_version is not None and len({id(r.firmware_version) for r in rows}) == 1
