"""What-if: appraise every device's latest evidence against a proposed manifest or policy.

Nothing is written and nothing is published. For each device the latest
authenticated platform evidence (firmware, PSA, ...) is read back from the
verdict table, verified again with the device's enrolled identity, appraised
by its scheme twice, against the references the hub holds now and against
the proposal, and the status the proposal would lead to is computed with the
same transition rules the pipeline uses (``hub.appraisal.transitions.after_verdict``).
A device counts as changed when the proposal leads it to another status than
the held references would on the same evidence: a device that was released
by hand and will turn trusted on its next evidence anyway is not the
proposal's doing.

Freshness and replay are not re-checked: the question is what the new
reference values or policy say about evidence the hub already accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.x509 import Certificate

from hub.appraisal import transitions
from hub.crypto.keys import KeyFileError, PublicKey, load_public_pem
from hub.reference.manifests import Manifest, ManifestError, parse_source, verify_manifest
from hub.reference.policy import Policy, load_policy
from hub.reference.trust import Tier
from hub.reference.values import References
from hub.schemes.base import AppraisalInputs, DeviceState, EvidenceError, EvidenceScheme, TrustAnchor
from hub.store.db import DeviceRecord, Store


class ProposalError(ValueError):
    """The proposed manifest or policy is invalid, or would be refused when published."""


@dataclass(frozen=True, slots=True)
class Proposal:
    """What would replace the references of one device class (either or both)."""

    manifest: Manifest | None = None
    policy: Policy | None = None

    @property
    def device_class(self) -> str:
        if self.manifest is not None:
            return self.manifest.device_class
        assert self.policy is not None
        return self.policy.device_class

    @property
    def label(self) -> str:
        parts = []
        if self.manifest is not None:
            parts.append(f"manifest {self.manifest.device_class}#{self.manifest.sequence}")
        if self.policy is not None:
            parts.append(f"policy {self.policy.ref}")
        return " and ".join(parts)


@dataclass(frozen=True, slots=True)
class Outcome:
    device_id: str
    device_class: str
    current_status: str
    proposed_status: str
    action: str
    tier_now: str
    tier_proposed: str
    problems_now: tuple[str, ...]
    problems_proposed: tuple[str, ...]
    evidence: str = ""
    note: str = ""
    baseline_status: str = ""
    """The status the same evidence leads to under the references held now (usually ``current_status``)."""

    @property
    def changed(self) -> bool:
        """The proposal, not merely the next evidence, would move the device."""
        return self.proposed_status != (self.baseline_status or self.current_status)

    @property
    def why(self) -> str:
        """The problems the proposal adds or clears, else its problems, else the note."""
        added = [p for p in self.problems_proposed if p not in self.problems_now]
        cleared = [p for p in self.problems_now if p not in self.problems_proposed]
        parts = added + [f"no longer: {p}" for p in cleared]
        return "; ".join(parts or list(self.problems_proposed)) or self.note or "-"

    def to_json(self) -> dict[str, object]:
        return {
            "device_id": self.device_id, "class": self.device_class, "changed": self.changed,
            "current_status": self.current_status, "proposed_status": self.proposed_status, "action": self.action,
            "baseline_status": self.baseline_status or self.current_status,
            "tier_now": self.tier_now, "tier_proposed": self.tier_proposed,
            "problems_now": list(self.problems_now), "problems_proposed": list(self.problems_proposed),
            "evidence": self.evidence, "note": self.note, "why": self.why,
        }


def load_proposal(manifest: tuple[str, bytes] | None, policy: str | None, references: References,
                  operator_keys: Mapping[str, PublicKey]) -> Proposal:
    """Build a proposal from a manifest (``(name, bytes)``: a TOML source or a signed one) and/or policy source.

    A signed manifest must verify with a trusted operator key; either must be newer than what is held.
    """
    proposed_manifest = proposed_policy = None
    if manifest is not None:
        name, data = manifest
        try:
            if name.endswith(".toml"):
                proposed_manifest = parse_source(data.decode("utf-8"))
            else:
                proposed_manifest = verify_manifest(data, operator_keys)
        except (ManifestError, UnicodeDecodeError) as exc:
            raise ProposalError(f"{name}: {exc}") from exc
        held = references.manifest(proposed_manifest.device_class)
        if held is not None and proposed_manifest.sequence <= held.sequence:
            raise ProposalError(f"{name}: sequence {proposed_manifest.sequence} is not above the "
                                f"{held.sequence} held; publishing it would be refused")
    if policy is not None:
        proposed_policy = load_policy(policy)
        held_policy = references.policy(proposed_policy.device_class)
        if held_policy.version and proposed_policy.version <= held_policy.version:
            raise ProposalError(f"policy version {proposed_policy.version} is not above the "
                                f"{held_policy.version} held; publishing it would be refused")
    if proposed_manifest is None and proposed_policy is None:
        raise ProposalError("nothing proposed: give a manifest or a policy")
    if (proposed_manifest is not None and proposed_policy is not None
            and proposed_manifest.device_class != proposed_policy.device_class):
        raise ProposalError("the proposed manifest and policy are for different device classes")
    return Proposal(proposed_manifest, proposed_policy)


def what_if(store: Store, references: References, schemes: Sequence[EvidenceScheme], proposal: Proposal,
            ca_certificates: Sequence[Certificate] = ()) -> list[Outcome]:
    """The outcome for every device of the proposal's class (read-only)."""
    platform = {s.name: s for s in schemes if s.attests_platform}
    with store.reading() as conn:
        devices = [d for d in store.list_devices(conn) if d.device_class == proposal.device_class]
        latest = store.latest_evidence(conn, platform)
    return [_one(device, latest.get(device.device_id), references, platform, proposal, tuple(ca_certificates))
            for device in devices]


def _one(device: DeviceRecord, verdict: dict[str, object] | None, references: References,
         schemes: Mapping[str, EvidenceScheme], proposal: Proposal, cas: tuple[Certificate, ...]) -> Outcome:
    def unchanged(note: str) -> Outcome:
        return Outcome(device.device_id, device.device_class, device.status, device.status, "none", "-", "-",
                       (), (), str(verdict["dedup_key"]) if verdict else "", note)

    if device.revoked:
        return unchanged("revoked")
    if verdict is None:
        return unchanged("no platform evidence yet")
    scheme = schemes.get(str(verdict["scheme"]))
    if scheme is None:
        return unchanged(f"scheme {verdict['scheme']!r} is not installed")
    try:
        key = load_public_pem(device.public_key_pem) if device.public_key_pem else None
        anchor = TrustAnchor(device.device_id, device.device_class, key, device.ueid, device.key_version, cas,
                             float(str(verdict["received_at"])))
        evidence = verdict["evidence"]
        assert isinstance(evidence, bytes)
        claims = scheme.verify(evidence, anchor)
    except (EvidenceError, KeyFileError) as exc:
        return unchanged(f"stored evidence no longer verifies: {exc}")
    state = DeviceState(svn_high_water=device.svn_high_water, firmware_tier=device.tier)
    now_manifest = references.manifest(device.device_class)
    now_policy = references.policy(device.device_class)
    baseline = scheme.appraise(claims, AppraisalInputs(now_manifest, now_policy, state))
    policy = proposal.policy or now_policy
    proposed = scheme.appraise(claims, AppraisalInputs(proposal.manifest or now_manifest, policy, state))
    tier = proposed.trust_vector.tier()
    step = transitions.after_verdict(device.status, device.quarantine_hold, tier, policy,
                                     platform=scheme.attests_platform)
    before = transitions.after_verdict(device.status, device.quarantine_hold, baseline.trust_vector.tier(),
                                       now_policy, platform=scheme.attests_platform)
    return Outcome(device.device_id, device.device_class, device.status, step.status, step.action,
                   _label(baseline.trust_vector.tier()), _label(tier), baseline.problems, proposed.problems,
                   str(verdict["dedup_key"]), baseline_status=before.status)


def _label(tier: Tier) -> str:
    return tier.label
