"""Closed-loop remediation: which firmware release a quarantined device is told to install.

Pure. When the hub quarantines a device because of what it runs (the trust
vector's ``executables`` claim is not affirming) and the signed manifest of its
class lists an approved release at or above every floor (the manifest's and the
policy's minimum security version and the highest one this device has proved),
the hub sends a signed ``remediate`` command naming the newest such release.
The device installs it, reboots and attests; fresh affirming platform evidence
then releases it when ``policy.release`` is ``auto``, or leaves it awaiting an
operator when it is ``operator`` (hub/appraisal/transitions.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from hub import wire
from hub.reference.manifests import Manifest, Release
from hub.reference.policy import Policy
from hub.reference.trust import Tier, TrustVector, tier_of

__all__ = ["Remediation", "plan_remediation"]


@dataclass(frozen=True, slots=True)
class Remediation:
    release: str
    svn: int
    floor: int


def plan_remediation(
    vector: TrustVector, manifest: Manifest | None, policy: Policy, svn_high_water: int
) -> Remediation | None:
    """The release to install, or None when firmware is not the problem or no release qualifies."""
    if manifest is None or tier_of(vector.executables) in (Tier.AFFIRMING, Tier.NONE):
        return None
    floor = max(manifest.min_svn, policy.min_svn, svn_high_water)
    candidates: list[Release] = [
        rel for rel in manifest.releases
        if rel.status == wire.RELEASE_APPROVED and rel.svn >= floor
        and (not policy.allowed_versions or rel.version in policy.allowed_versions)
    ]
    if not candidates:
        return None
    newest = max(candidates, key=lambda rel: (rel.svn, rel.version))
    return Remediation(newest.version, newest.svn, floor)
