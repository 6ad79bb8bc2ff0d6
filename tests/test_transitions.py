"""Device status transitions: the whole table of (status, hold, tier, policy) -> (status, action, command)."""

from __future__ import annotations

import pytest

from hub import wire
from hub.appraisal import transitions as t
from hub.reference.policy import Policy, TierActions
from hub.reference.trust import Tier

AUTO = Policy("c")
OPERATOR = Policy("c", release="operator")
STRICT = Policy("c", actions=TierActions(warning="quarantine", contraindicated="require-release"))

A, W, C, N = Tier.AFFIRMING, Tier.WARNING, Tier.CONTRAINDICATED, Tier.NONE
Q, R = wire.COMMAND_QUARANTINE, wire.COMMAND_RELEASE

TABLE = [
    # status, hold, tier, policy -> status, action, command, hold
    (t.ENROLLED, False, A, AUTO, t.TRUSTED, "affirm", None, False),
    (t.TRUSTED, False, A, AUTO, t.TRUSTED, "affirm", None, False),
    (t.WARNING, False, A, AUTO, t.TRUSTED, "affirm", None, False),
    (t.ENROLLED, False, W, AUTO, t.WARNING, "warn", None, False),
    (t.TRUSTED, False, W, AUTO, t.WARNING, "warn", None, False),
    (t.TRUSTED, False, N, AUTO, t.WARNING, "warn", None, False),
    (t.TRUSTED, False, C, AUTO, t.QUARANTINED, "quarantine", Q, False),
    (t.ENROLLED, False, C, AUTO, t.QUARANTINED, "quarantine", Q, False),
    (t.QUARANTINED, False, C, AUTO, t.QUARANTINED, "already-quarantined", None, False),
    (t.QUARANTINED, False, A, AUTO, t.TRUSTED, "release", R, False),
    (t.QUARANTINED, True, A, AUTO, t.QUARANTINED, "awaiting-operator-release", None, True),
    (t.QUARANTINED, False, A, OPERATOR, t.QUARANTINED, "awaiting-operator-release", None, False),
    (t.QUARANTINED, False, W, AUTO, t.QUARANTINED, "awaiting-operator-release", None, False),
    (t.TRUSTED, False, W, STRICT, t.QUARANTINED, "quarantine", Q, False),
    (t.TRUSTED, False, C, STRICT, t.QUARANTINED, "quarantine", Q, True),
    (t.QUARANTINED, False, C, STRICT, t.QUARANTINED, "already-quarantined", None, True),
    (t.QUARANTINED, True, C, AUTO, t.QUARANTINED, "already-quarantined", None, True),
]


@pytest.mark.parametrize(("status", "hold", "tier", "policy", "new", "action", "command", "new_hold"), TABLE)
def test_transition_table(status: str, hold: bool, tier: Tier, policy: Policy, new: str, action: str,
                          command: str | None, new_hold: bool) -> None:
    step = t.after_verdict(status, hold, tier, policy)
    assert (step.status, step.action, step.command, step.hold) == (new, action, command, new_hold)


def test_data_evidence_cannot_vouch_for_a_device() -> None:
    """Only platform evidence releases a quarantine or marks a device trusted."""
    assert t.after_verdict(t.QUARANTINED, False, A, AUTO, platform=False).status == t.QUARANTINED
    assert t.after_verdict(t.WARNING, False, A, AUTO, platform=False).status == t.WARNING
    assert t.after_verdict(t.TRUSTED, False, C, AUTO, platform=False).command == Q


def test_a_manual_hold_survives_any_verdict() -> None:
    for tier in (A, W, C, N):
        for policy in (AUTO, OPERATOR, STRICT):
            step = t.after_verdict(t.QUARANTINED, True, tier, policy)
            assert step.status == t.QUARANTINED and step.hold and step.command is None


def test_a_quarantine_caused_by_data_is_held_for_an_operator() -> None:
    """Firmware evidence affirming the platform must not release a device whose key signed a broken chain."""
    step = t.after_verdict(t.TRUSTED, False, C, AUTO, platform=False)
    assert step.status == t.QUARANTINED and step.hold
    after = t.after_verdict(step.status, step.hold, A, AUTO, platform=True)
    assert after.status == t.QUARANTINED and after.command is None
