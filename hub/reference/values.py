"""Reference values and policies held by a worker: signed, immutable, replaced only by newer ones.

A worker loads the latest manifests and policies from the store at start and
takes newer ones from the retained announcements on ``hub/manifests/{class}``,
so every worker picks up a new manifest without a restart. A manifest whose
sequence number is not higher than the one held is refused (RFC 9124 4.3.1).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from hub.crypto.keys import PublicKey
from hub.reference.manifests import Manifest, ManifestError, verify_manifest
from hub.reference.policy import Policy, PolicyError, default_policy, load_policy

log = logging.getLogger(__name__)


class References:
    def __init__(self, operator_keys: Mapping[str, PublicKey]) -> None:
        self._operator_keys = dict(operator_keys)
        self._manifests: dict[str, Manifest] = {}
        self._policies: dict[str, Policy] = {}

    def manifest(self, device_class: str) -> Manifest | None:
        return self._manifests.get(device_class)

    def policy(self, device_class: str) -> Policy:
        return self._policies.get(device_class) or default_policy(device_class)

    @property
    def manifests(self) -> Mapping[str, Manifest]:
        return self._manifests

    def offer_manifest(self, signed: bytes) -> Manifest | None:
        """Verify a signed manifest; adopt it if its sequence number is higher. None if not newer."""
        manifest = verify_manifest(signed, self._operator_keys)
        current = self._manifests.get(manifest.device_class)
        if current is not None and manifest.sequence <= current.sequence:
            if manifest.sequence < current.sequence:
                raise ManifestError(
                    f"manifest for {manifest.device_class} has sequence {manifest.sequence}, "
                    f"lower than the {current.sequence} held (rollback refused)"
                )
            return None
        self._manifests[manifest.device_class] = manifest
        log.info("manifest adopted", extra={"device_class": manifest.device_class, "sequence": manifest.sequence})
        return manifest

    def offer_policy(self, source: str) -> Policy | None:
        policy = load_policy(source)
        current = self._policies.get(policy.device_class)
        if current is not None and policy.version <= current.version:
            if policy.version < current.version:
                raise PolicyError(f"policy version {policy.version} is lower than the {current.version} held")
            return None
        self._policies[policy.device_class] = policy
        return policy

    def load(self, manifests: Mapping[str, bytes], policies: Mapping[str, str]) -> list[str]:
        """Adopt stored manifests and policies; returns the problems met (never raises for one bad entry)."""
        problems = []
        for device_class, signed in manifests.items():
            try:
                self.offer_manifest(signed)
            except ManifestError as exc:
                problems.append(f"stored manifest for {device_class}: {exc}")
        for device_class, source in policies.items():
            try:
                self.offer_policy(source)
            except PolicyError as exc:
                problems.append(f"stored policy for {device_class}: {exc}")
        return problems
