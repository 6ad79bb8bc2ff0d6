"""The older PSA profiles RFC 9783 (appendix A) recommends verifiers accept, mapped to psa#tfm.

Deployed TF-M platforms send ``http://arm.com/psa/2.0.0`` (EAT keys, the boot seed under 2397) or
``PSA_IOT_PROFILE_1`` (every claim in the -75000 range, the profile named in -75000). ``as_tfm``
rewrites their claims under the ``tag:psacertified.org,2023:psa#tfm`` keys, so ``psa.psa_claims``
reads every profile by the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from hub import wire
from hub.schemes.base import EvidenceError

LEGACY_CERTIFICATION_REFERENCE = re.compile(r"[0-9]{13}(-[0-9]{5})?")  # EAN-13, or EAN-13+5
_P1_KEYS = {  # PSA_IOT_PROFILE_1 claim -> its psa#tfm key (RFC 9783 appendix A)
    wire.PSA_P1_CLIENT_ID: wire.PSA_CLIENT_ID,
    wire.PSA_P1_SECURITY_LIFECYCLE: wire.PSA_SECURITY_LIFECYCLE,
    wire.PSA_P1_IMPLEMENTATION_ID: wire.PSA_IMPLEMENTATION_ID,
    wire.PSA_P1_BOOT_SEED: wire.PSA_BOOT_SEED,
    wire.PSA_P1_HARDWARE_VERSION: wire.PSA_CERTIFICATION_REFERENCE,
    wire.PSA_P1_SOFTWARE_COMPONENTS: wire.PSA_SOFTWARE_COMPONENTS,
    wire.PSA_P1_NONCE: wire.NONCE,
    wire.PSA_P1_INSTANCE_ID: wire.UEID,
    wire.PSA_P1_VERIFICATION_SERVICE: wire.PSA_VERIFICATION_SERVICE,
}


def profile_of(payload: Mapping[object, object]) -> str | None:
    """Which PSA profile a claims map declares: eat_profile (265), or the profile 1 claim (-75000)."""
    declared = payload.get(wire.EAT_PROFILE)
    if declared in (wire.PSA_PROFILE, wire.PSA_PROFILE_2):
        return str(declared)
    if wire.EAT_PROFILE not in payload and payload.get(wire.PSA_P1_PROFILE) == wire.PSA_PROFILE_1:
        return wire.PSA_PROFILE_1
    return None


def as_tfm(payload: Mapping[object, object], profile: str) -> Mapping[object, object]:
    """The claims of an older profile under their psa#tfm keys (RFC 9783 appendix A). Keys the declared
    profile does not define are left out, as any unknown claim is ignored (RFC 9711 section 4)."""
    if profile == wire.PSA_PROFILE:
        return payload
    if profile == wire.PSA_PROFILE_2:
        mapped = {k: v for k, v in payload.items() if k not in (wire.PSA_BOOT_SEED, wire.PSA_LEGACY_BOOT_SEED)}
        if wire.PSA_LEGACY_BOOT_SEED in payload:
            mapped[wire.PSA_BOOT_SEED] = payload[wire.PSA_LEGACY_BOOT_SEED]
        return mapped
    if wire.PSA_P1_NO_SW_MEASUREMENTS in payload and wire.PSA_P1_SOFTWARE_COMPONENTS not in payload:
        raise EvidenceError("bad-claim", "the token asserts no software measurements (-75007): nothing to "
                            "appraise", authenticated=True)
    return {tfm: payload[p1] for p1, tfm in _P1_KEYS.items() if p1 in payload}
