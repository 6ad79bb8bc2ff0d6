"""Hub workers on two "hosts" (network namespaces made here, loopback only) against one PostgreSQL and one
Mosquitto with the dynamic-security plugin: evidence shared through the shared subscription, each piece
verdicted once, a quarantine decided on one host enforced through the broker from that host, and losing a
host loses nothing: another takes over its identities, or its sessions expire and the devices re-send
(docs/SCALING.md, "Several hosts").

Skipped only where network namespaces cannot be created (not root, no iproute2, a kernel that refuses)."""

from __future__ import annotations

import re
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest

from device_sim.records import Profile
from tests.enforcement_env import NOT_AUTHORIZED, wait_for
from tests.multihost_env import Host, TwoHosts, make_two_hosts
from tests.netns import NamespaceUnavailable

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]


def _all_verdicted_once(env: TwoHosts) -> bool:
    keys = env.verdict_keys()
    published = sum(len(d.evidence_log) for d in env.fleet.devices)
    return len(keys) == published


def _round(env: TwoHosts) -> None:
    env.fleet.publish_round()
    assert env.fleet.flush(10)


def _rounds_until_shared(env: TwoHosts, hosts: list[Host], rounds: int, within_s: float = 30.0) -> None:
    """At least ``rounds`` rounds, each verdicted, then more until every host in ``hosts`` has taken a share.

    A host may subscribe (and serve its metrics) after the first rounds went to the other: rounds back to back
    took under 3 s, less than a host's start on a loaded machine, so the wait is by time."""
    deadline = time.monotonic() + within_s
    done = 0
    while True:
        _round(env)
        done += 1
        assert wait_for(lambda: _all_verdicted_once(env), 30)
        if done >= rounds and (all(h.received() > 0 for h in hosts) or time.monotonic() > deadline):
            break
        if done >= rounds:
            time.sleep(0.3)
    assert all(h.received() > 0 for h in hosts), f"no share taken by {[h.name for h in hosts if not h.received()]}"


def test_two_hosts_share_the_evidence_enforce_from_the_deciding_host_and_survive_losing_one(
    tmp_path: Path,
) -> None:
    with ExitStack() as stack:
        try:
            env = make_two_hosts(stack, tmp_path, "honest:11,ignores-commands:1", 12)
        except NamespaceUnavailable as exc:
            pytest.skip(f"network namespaces cannot be created here: {exc}")
        fleet, a, b = env.fleet, env.hosts["a"], env.hosts["b"]
        bad = next(d for d in fleet.devices if d.profile is Profile.IGNORES_COMMANDS)
        assert fleet.wait_for_epoch(20) is not None, "host a leads: its epoch reached the devices"

        # 1. both hosts take evidence from the one shared subscription; each piece gets one verdict
        _rounds_until_shared(env, [a, b], 8)
        keys = env.verdict_keys()
        assert len(keys) == len(set(keys)), "no evidence verdicted twice"
        assert a.received() > 0 and b.received() > 0, "both hosts took a share"
        assert wait_for(lambda: a.received() + b.received() == len(keys), 10), (a.received(), b.received())

        # 2. the quarantine decided on one host is enforced through the broker by that host
        assert wait_for(lambda: bool(env.dynsec_senders(bad.device_id)), 20)
        senders = set(env.dynsec_senders(bad.device_id))
        deciders = {h.name for h in (a, b) if re.search(
            rf'"broker enforcement: quarantine".*"device_id": "{re.escape(bad.device_id)}"',
            h.log.read_text(errors="replace"))}
        assert len(deciders) == 1, f"one host decided: {deciders}"
        decider = deciders.pop()
        assert senders and all(s.startswith(f"hub-{decider}-w") for s in senders), senders

        def denied() -> bool:
            _round(env)
            return NOT_AUTHORIZED in fleet.data_reason_codes(bad.device_id)
        assert wait_for(denied, 20, poll=0.2), "its data is refused on the session it has open"

        # 3. host b dies (SIGKILL, no goodbye); host a goes on alone, and b's queued share is not lost:
        #    host a takes b's identities over and the broker hands b's sessions' messages to them
        before = a.received()
        b.kill()
        for _ in range(6):
            _round(env)
        assert wait_for(lambda: a.received() > before, 20), "host a still takes evidence"
        published = sum(len(d.evidence_log) for d in fleet.devices)
        assert len(env.verdict_keys()) < published, "part of the evidence waits in b's sessions"
        b.start(netns=a.netns)
        assert wait_for(lambda: _all_verdicted_once(env), 30), (len(env.verdict_keys()), published)
        keys = env.verdict_keys()
        assert len(keys) == len(set(keys)) == published
        assert fleet.resent == 0, "nothing had to be re-sent: nothing was lost"
        per_device = Counter(device for device, _ in keys)
        assert all(per_device[d.device_id] == len(d.evidence_log) for d in fleet.devices)


def test_a_lost_host_whose_sessions_expire_loses_nothing_the_devices_resend_to_the_other(tmp_path: Path) -> None:
    """No takeover: the broker drops the dead host's sessions (and what it queued for them) at their expiry;
    the devices re-send what has no receipt yet, and the surviving host verdicts it once."""
    with ExitStack() as stack:
        try:
            env = make_two_hosts(stack, tmp_path, "honest:8", 8, workers=1, session_expiry_s=3,
                                 fleet_options={"resend_after": 1.0, "max_resends": 20})
        except NamespaceUnavailable as exc:
            pytest.skip(f"network namespaces cannot be created here: {exc}")
        fleet, a, b = env.fleet, env.hosts["a"], env.hosts["b"]
        assert fleet.wait_for_epoch(20) is not None
        _rounds_until_shared(env, [b], 1)
        b.kill()
        for _ in range(4):
            _round(env)
        published = sum(len(d.evidence_log) for d in fleet.devices)
        assert wait_for(lambda: len(env.verdict_keys()) < published and a.received() > 0, 10)
        stuck = published - len(env.verdict_keys())

        def resent_all() -> bool:
            fleet.publish_round(fresh=False)  # re-sends only: evidence without a receipt, older than 1 s
            fleet.flush(5)
            return _all_verdicted_once(env)
        assert wait_for(resent_all, 40, poll=0.5), (len(env.verdict_keys()), published)
        keys = env.verdict_keys()
        assert len(keys) == len(set(keys)) == published
        assert fleet.resent >= stuck > 0, "what b's sessions held came back as re-sends"
