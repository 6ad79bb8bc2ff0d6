"""Reference values and appraisal policy (RFC 9334 §3.2, the Reference Value Provider's and Verifier
Owner's inputs): signed firmware manifests, per-class policy, the AR4SI trust vector and device identity.
Schemes and the orchestrator both read these.

See README.md in this folder for what the package owns and what it may import.
"""

from hub.reference.identity import IdentityError, parse_x5chain, verify_chain
from hub.reference.manifests import (
    Component,
    Manifest,
    ManifestError,
    Release,
    parse_source,
    sign_manifest,
    verify_manifest,
)
from hub.reference.policy import Policy, PolicyError, default_policy, load_policy
from hub.reference.trust import Tier, TrustVector, tier_of
from hub.reference.values import References

__all__ = [
    "Component", "IdentityError", "Manifest", "ManifestError", "Policy", "PolicyError", "References", "Release",
    "Tier", "TrustVector", "default_policy", "load_policy", "parse_source", "parse_x5chain", "sign_manifest",
    "tier_of", "verify_chain", "verify_manifest",
]
