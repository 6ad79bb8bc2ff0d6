"""Simulated IoT fleet: attesters with their own keys, firmware images and behaviours.

Independent of the hub by design: it imports ``hub.wire`` (constants) and nothing
else from ``hub``, and encodes CBOR / COSE_Sign1 itself.
"""

from __future__ import annotations

from device_sim.commands import Command, Epoch, Rejection
from device_sim.device import SimDevice
from device_sim.fleet import Fleet, FleetError
from device_sim.profiles import build_fleet, enrolment, parse_mix
from device_sim.records import CommandOutcome, EvidenceKind, EvidenceRecord, Profile

__all__ = [
    "Command",
    "CommandOutcome",
    "Epoch",
    "EvidenceKind",
    "EvidenceRecord",
    "Fleet",
    "FleetError",
    "Profile",
    "Rejection",
    "SimDevice",
    "build_fleet",
    "enrolment",
    "parse_mix",
]
