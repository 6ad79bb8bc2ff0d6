"""The detector's streaming statistics and scores, on synthetic verdict streams (pure, no database).

Each check the detector makes has a case where removing it would raise a finding that should not be
raised (its own usual, its class, the minimum counts, the warm-up, acknowledged sets).
"""

from __future__ import annotations

import random

import pytest

from device_sim.device import SimDevice
from hub.anomaly.metadata import measurement_set
from hub.anomaly.scores import Assessment, assess
from hub.anomaly.stats import (
    BOOTS,
    CADENCE,
    RARE,
    SIGNATURES,
    AnomalyStateError,
    DetectorConfig,
    DeviceStats,
    VerdictEvent,
    counter_of,
    duration,
    observe,
)

CONFIG = DetectorConfig()
CLASS = "env-sensor"


class Fleet:
    """Synthetic devices reporting at their own intervals (deterministic jitter)."""

    def __init__(self, n: int, interval: float = 10.0) -> None:
        self.stats = {f"d{i:02d}": DeviceStats(f"d{i:02d}", CLASS) for i in range(n)}
        self.interval = {d: interval for d in self.stats}
        self.bootcount = dict.fromkeys(self.stats, 1)
        self.seq = dict.fromkeys(self.stats, 0)
        self.fingerprint = dict.fromkeys(self.stats, "common")
        self.silent_until = dict.fromkeys(self.stats, 0.0)
        self.next = {d: i * 0.1 for i, d in enumerate(self.stats)}
        self.random = random.Random(7)
        self.now = 0.0

    def report(self, device_id: str, at: float, *, authenticated: bool = True) -> None:
        self.seq[device_id] += 1
        event = VerdictEvent(device_id, at, "firmware", authenticated, not authenticated,
                             (self.bootcount[device_id], self.seq[device_id]), self.fingerprint[device_id], "1.2.0")
        observe(self.stats[device_id], event, CONFIG)

    def run(self, until: float, creep: dict[str, float] | None = None) -> None:
        events = []
        for d in self.stats:
            t = self.next[d]
            while t < until:
                if t >= self.silent_until[d]:
                    events.append((t, d))
                if creep and d in creep:
                    self.interval[d] *= 1 + creep[d]
                t += self.interval[d] * (1 + self.random.uniform(-0.1, 0.1))
            self.next[d] = t
        for t, d in sorted(events):
            self.report(d, t)
        self.now = until

    def assess(self, known: dict[str, frozenset[str]] | None = None) -> dict[tuple[str, str], Assessment]:
        return {(a.device_id, a.kind): a for a in assess(self.stats, self.now, CONFIG, known)}

    def flagged(self, known: dict[str, frozenset[str]] | None = None) -> dict[tuple[str, str], Assessment]:
        return {k: a for k, a in self.assess(known).items() if a.score >= CONFIG.threshold}


def test_an_honest_class_raises_nothing() -> None:
    fleet = Fleet(20)
    fleet.run(3000)
    assert fleet.flagged() == {}
    scores = fleet.assess()
    assert max(a.score for a in scores.values()) < 0.5


def test_creeping_delay_is_late_against_its_own_usual_and_its_class() -> None:
    fleet = Fleet(20)
    fleet.run(400)
    fleet.run(2000, creep={"d03": 0.03})
    flagged = fleet.flagged()
    assert set(flagged) == {("d03", CADENCE)}
    text = flagged[("d03", CADENCE)].explanation
    assert text.startswith("d03: evidence arrives") and "later than its own usual and than its class's" in text
    assert ", for " in text


def test_a_device_always_slower_than_its_class_is_its_own_normal() -> None:
    fleet = Fleet(20)
    fleet.interval["d05"] = 15.0  # configured differently from the start: late vs the class only
    fleet.run(3000)
    assert ("d05", CADENCE) not in fleet.flagged()
    assert fleet.assess()[("d05", CADENCE)].detail["class_s"] == pytest.approx(10.0, rel=0.1)


def test_a_fleet_wide_slowdown_singles_out_nobody() -> None:
    fleet = Fleet(20)
    fleet.run(400)
    for d in fleet.interval:
        fleet.interval[d] = 20.0  # a slow broker, a new interval for the class: late vs its own usual only
    fleet.run(3000)
    assert fleet.flagged() == {}


def test_boot_loop_is_found_and_one_reboot_is_not() -> None:
    fleet = Fleet(12)
    for _ in range(30):
        fleet.run(fleet.now + 10)
        fleet.bootcount["d02"] += 1  # reboots between every two reports
    fleet.bootcount["d07"] += 1  # one reboot (an update): below min_reboots
    fleet.run(fleet.now + 30)
    flagged = fleet.flagged()
    assert set(flagged) == {("d02", BOOTS)}
    assert "boot count climbed by" in flagged[("d02", BOOTS)].explanation


def test_a_class_wide_reboot_is_not_a_boot_loop() -> None:
    fleet = Fleet(12)
    for _ in range(4):  # four power cuts: every device reboots each time
        fleet.run(fleet.now + 50)
        for d in fleet.bootcount:
            fleet.bootcount[d] += 1
    fleet.run(fleet.now + 50)
    assert fleet.flagged() == {}


def test_rare_release_taken_up_by_a_few_devices_together() -> None:
    fleet = Fleet(20)
    fleet.run(500)
    fleet.fingerprint["d04"] = fleet.fingerprint["d11"] = "rare"
    fleet.run(600)
    flagged = fleet.flagged()
    assert set(flagged) == {("d04", RARE), ("d11", RARE)}
    assert "run by only 2 of 20" in flagged[("d04", RARE)].explanation
    assert fleet.flagged({CLASS: frozenset({"rare"})}) == {}, "an acknowledged set is never rare"


def test_one_device_alone_on_a_rare_release_is_not_a_cluster() -> None:
    fleet = Fleet(20)
    fleet.run(500)
    fleet.fingerprint["d04"] = "rare"
    fleet.run(600)
    assert fleet.flagged() == {}


def test_a_release_switch_spread_over_time_is_not_a_cluster() -> None:
    fleet = Fleet(20)
    fleet.run(500)
    fleet.fingerprint["d04"] = "rare"
    fleet.run(1000)  # 50 intervals later, well outside the window
    fleet.fingerprint["d11"] = "rare"
    fleet.run(1100)
    assert fleet.flagged() == {}


def test_a_minority_release_since_the_start_is_not_rare() -> None:
    fleet = Fleet(20)
    fleet.fingerprint["d04"] = fleet.fingerprint["d11"] = "older"  # within the class's warm-up
    fleet.run(2000)
    assert fleet.flagged() == {}


def test_devices_appearing_together_after_warm_up_with_a_rare_release() -> None:
    fleet = Fleet(20)
    fleet.fingerprint["d04"] = fleet.fingerprint["d11"] = "rare"
    fleet.silent_until["d04"] = fleet.silent_until["d11"] = 800.0
    fleet.run(1200)
    assert set(fleet.flagged()) == {("d04", RARE), ("d11", RARE)}


def test_a_release_most_of_the_class_runs_is_not_rare() -> None:
    fleet = Fleet(10)
    fleet.run(500)
    for d in ("d01", "d02", "d03"):  # 30%: a rollout under way
        fleet.fingerprint[d] = "new"
    fleet.run(600)
    assert fleet.flagged() == {}


def test_signature_failures_against_the_class() -> None:
    fleet = Fleet(12)
    fleet.run(300)
    for k in range(6):
        fleet.report("d06", fleet.now + k, authenticated=False)
    fleet.report("d07", fleet.now + 1, authenticated=False)  # one failure: below min_failures
    flagged = fleet.flagged()
    assert set(flagged) == {("d06", SIGNATURES)}
    assert "6 of its last" in flagged[("d06", SIGNATURES)].explanation


def test_small_classes_are_not_compared() -> None:
    fleet = Fleet(CONFIG.min_class - 1)
    for _ in range(30):
        fleet.run(fleet.now + 10)
        fleet.bootcount["d02"] += 1
    assert fleet.flagged() == {}


def test_state_round_trips_and_bad_state_is_refused() -> None:
    fleet = Fleet(6)
    fleet.run(200)
    stats = fleet.stats["d01"]
    again = DeviceStats.from_json("d01", CLASS, stats.to_json())
    assert again == stats
    with pytest.raises(AnomalyStateError):
        DeviceStats.from_json("d01", CLASS, "[1, 2]")
    with pytest.raises(AnomalyStateError):
        DeviceStats.from_json("d01", CLASS, '{"unknown_field": 1}')


def test_window_is_bounded() -> None:
    fleet = Fleet(6)
    fleet.run(5000)
    stats = fleet.stats["d01"]
    assert len(stats.boots) == len(stats.outcomes) == CONFIG.window
    assert len(stats.gaps) == CONFIG.gap_window


def test_counter_and_durations() -> None:
    assert counter_of("3:17") == (3, 17)
    assert counter_of("sha256:abcd") is None
    assert counter_of("data:1:2:ff") is None
    assert duration(0.84) == "0.8 s"
    assert duration(40) == "40 s"
    assert duration(3 * 3600) == "3 h"
    assert duration(3 * 86400) == "3 days"


def test_measurement_set_names_the_release_and_images() -> None:
    current = SimDevice("env-sensor-0001", CLASS, seed="t")
    older = SimDevice("env-sensor-0002", CLASS, seed="t", version="1.1.0")
    peer = SimDevice("env-sensor-0003", CLASS, seed="t")
    nonce = b"\x01" * 32
    a, b, c = (measurement_set(d.make_evidence(nonce)) for d in (current, older, peer))
    assert a[1] == "1.2.0" and b[1] == "1.1.0"
    assert a[0] == c[0] != b[0], "same images, same set; another release, another set"
    assert measurement_set(b"\x00garbage") == (None, None)
