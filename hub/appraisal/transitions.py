"""Device status transitions: from a verdict and the class policy to a status and an action.

Pure. Only authenticated, fresh evidence moves a device: a forged, stale or
replayed message gets a negative verdict of its own but cannot quarantine a
good device, or the network attacker the hub defends against could do so.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub import wire
from hub.reference.policy import Policy
from hub.reference.trust import Tier

TRUSTED = "trusted"
WARNING = "warning"
QUARANTINED = "quarantined"
ENROLLED = "enrolled"
REVOKED = "revoked"
MISSED = "missed-attestation"


@dataclass(frozen=True, slots=True)
class Transition:
    status: str
    action: str
    command: str | None = None
    hold: bool = False


def after_verdict(status: str, hold: bool, tier: Tier, policy: Policy, *, platform: bool = True) -> Transition:
    """What an authenticated, fresh verdict of ``tier`` does to a device in ``status``.

    Only platform evidence (what the device runs) can release a quarantine or
    mark it trusted; data evidence can warn or quarantine but not vouch.
    """
    wanted = {
        Tier.AFFIRMING: policy.actions.affirming,
        Tier.WARNING: policy.actions.warning,
        Tier.CONTRAINDICATED: policy.actions.contraindicated,
    }.get(tier, policy.actions.warning)
    if wanted in ("quarantine", "require-release"):
        # A quarantine caused by data evidence (the device's key signed an inconsistent chain) is held for an
        # operator: fresh firmware evidence says what the device runs, not that its data can be trusted again.
        new_hold = hold or wanted == "require-release" or not platform
        if status == QUARANTINED:
            # The cause of the quarantine decides the hold: a device quarantined for its firmware also has
            # its data appraised as contraindicated (untrusted source), which must not block its remediation.
            return Transition(QUARANTINED, "already-quarantined", None, hold or wanted == "require-release")
        return Transition(QUARANTINED, "quarantine", wire.COMMAND_QUARANTINE, new_hold)
    if status == QUARANTINED:
        if wanted == "affirm" and not hold and policy.release == "auto" and platform:
            return Transition(TRUSTED, "release", wire.COMMAND_RELEASE, False)
        return Transition(QUARANTINED, "awaiting-operator-release", None, hold)
    if wanted == "warn":
        return Transition(WARNING, "warn")
    if not platform:
        return Transition(status, "affirm")
    return Transition(TRUSTED, "affirm")


def escalates(status: str, hold: bool, step: Transition) -> bool:
    """Whether ``step`` (of a late verdict: evidence older than the device's newest) only makes the device
    stricter: into quarantine, or a quarantine that now needs an operator's release. Late evidence may do
    that (a contraindication stands whatever came after it in the same boot) but never release a device,
    mark it trusted or move it to warning: its status follows its newest evidence (docs/SECURITY.md row 1)."""
    return step.status == QUARANTINED and (status != QUARANTINED or (step.hold and not hold))
