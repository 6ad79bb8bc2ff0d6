"""Profile mixes and fleet construction.

A mix is ``"profile[@version]:weight,..."``, e.g. ``"honest:40,tampered:3,rollback:3,replay:2,forged:2"``
or a named mix (``demo``). For N devices the weights become counts by largest
remainder (every profile with a weight gets at least one device when N allows), and
the profiles are interleaved by smooth weighted round robin, so the same N, mix and
seed always give the same fleet. Device classes alternate (env-sensor, smart-meter,
...); ids are ``{class}-{index:04d}`` numbered from 1 within each class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from device_sim import firmware, keys
from device_sim.data_profiles import DATA_MIX_NAMES, DataProfile
from device_sim.device import SimDevice
from device_sim.records import Profile

NAMED_MIXES: Final = MappingProxyType(
    {
        "demo": "honest:40,tampered:3,rollback:3,replay:2,forged:2",
        "honest": "honest:1",
        "mixed-versions": "honest:30,honest@1.1.0:10,tampered:3,rollback:3,replay:2,forged:2",
        "data": "honest:10,data-mitm:1,data-drop:1,data-replay:1,data-reorder:1,data-restart:1,"
        "data-ignores-quarantine:1",
    }
)


class MixError(ValueError):
    """A profile mix string cannot be understood."""


@dataclass(frozen=True, slots=True)
class MixEntry:
    profile: Profile
    weight: int
    version: str | None = None  # None: the profile's default release
    data_profile: DataProfile = DataProfile.HONEST


def parse_mix(text: str) -> tuple[MixEntry, ...]:
    """Parse a mix string or a named mix."""
    spec = NAMED_MIXES.get(text.strip(), text)
    entries: list[MixEntry] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, weight_text = part.partition(":")
        name, _, version = name.strip().partition("@")
        data_profile = DataProfile.HONEST
        if name.strip() in DATA_MIX_NAMES:
            firmware_profile, data_profile = DATA_MIX_NAMES[name.strip()]
            name = firmware_profile.value
        try:
            profile = Profile(name.strip())
            weight = int(weight_text) if sep else 1
        except ValueError as exc:
            known = ", ".join([p.value for p in Profile] + list(DATA_MIX_NAMES))
            raise MixError(f"bad mix entry {part!r} (profiles: {known})") from exc
        if weight < 0:
            raise MixError(f"negative weight in {part!r}")
        if version:
            try:
                firmware.release(version.strip())
            except firmware.UnknownFirmwareError as exc:
                raise MixError(str(exc)) from exc
        entries.append(MixEntry(profile, weight, version.strip() or None, data_profile))
    if sum(e.weight for e in entries) <= 0:
        raise MixError(f"mix {text!r} has no positive weight")
    return tuple(entries)


def allocate(n: int, mix: tuple[MixEntry, ...]) -> list[int]:
    """How many of ``n`` devices each mix entry gets (same order as ``mix``)."""
    total = sum(e.weight for e in mix)
    counts = [n * e.weight // total for e in mix]
    remainders = [n * e.weight % total for e in mix]
    positive = [i for i, e in enumerate(mix) if e.weight > 0]
    if n >= len(positive):  # every weighted profile appears at least once
        for i in positive:
            if counts[i] == 0:
                counts[i] = 1
                remainders[i] = -1
    while sum(counts) > n:  # taken from the largest group
        counts[max(range(len(counts)), key=lambda i: counts[i])] -= 1
    order = sorted(positive, key=lambda i: (-remainders[i], i))
    k = 0
    while sum(counts) < n:
        counts[order[k % len(order)]] += 1
        k += 1
    return counts


def interleave(counts: list[int]) -> list[int]:
    """Smooth weighted round robin over entry indices: spreads the minority profiles out."""
    total = sum(counts)
    current = [0] * len(counts)
    left = list(counts)
    out: list[int] = []
    for _ in range(total):
        for i, c in enumerate(counts):
            if left[i] > 0:
                current[i] += c
        pick = max((i for i in range(len(counts)) if left[i] > 0), key=lambda i: (current[i], -i))
        current[pick] -= total
        left[pick] -= 1
        out.append(pick)
    return out


def device_ids(n: int) -> list[tuple[str, str]]:
    """``(device_id, device_class)`` for n devices, classes alternating."""
    per_class: dict[str, int] = {}
    out: list[tuple[str, str]] = []
    for i in range(n):
        cls = firmware.DEVICE_CLASSES[i % len(firmware.DEVICE_CLASSES)]
        per_class[cls] = per_class.get(cls, 0) + 1
        out.append((f"{cls}-{per_class[cls]:04d}", cls))
    return out


def build_fleet(n: int, mix: str = "demo", seed: str = keys.DEFAULT_SEED, *,
                bootcount: int | Mapping[str, int] = 1) -> list[SimDevice]:
    """N simulated devices with profiles from ``mix``; deterministic in (n, mix, seed).

    ``bootcount``: every device's boot count, or each device's by id (device_sim/bootcounts.py; 1 if absent).
    """
    if n < 0:
        raise MixError("the number of devices cannot be negative")
    entries = parse_mix(mix)
    picks = interleave(allocate(n, entries))
    return [
        SimDevice(
            device_id,
            cls,
            entries[pick].profile,
            seed=seed,
            version=entries[pick].version,
            bootcount=bootcount if isinstance(bootcount, int) else bootcount.get(device_id, 1),
            data_profile=entries[pick].data_profile,
        )
        for (device_id, cls), pick in zip(device_ids(n), picks, strict=True)
    ]


def enrolment(devices: list[SimDevice]) -> dict[str, object]:
    """The enrolment document: ``{"devices": [{device_id, device_class, public_key_pem, ueid}]}``.

    The key is the enrolled one, also for forged devices (which sign with another key).
    """
    return {
        "devices": [
            {
                "device_id": d.device_id,
                "device_class": d.device_class,
                "public_key_pem": d.public_key_pem.decode(),
                "ueid": d.ueid.hex(),
            }
            for d in devices
        ]
    }
