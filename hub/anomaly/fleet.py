"""The leader's detector state held in memory between passes, so a pass costs what is new.

The per-device state (``DeviceStats``, bounded by the detector's windows) is
read from ``anomaly_stat`` once, when a worker becomes leader or after its
memory may be behind the database (another pass moved the cursor, a pass
failed before its commit). From then on a pass folds in only the verdicts
after the cursor and rescores only the classes they touched: a device's
scores depend on its own state and on its class's aggregates, so a class
with any new evidence is rescored as a whole (arithmetic on memory, no reads
or writes of its quiet members' rows) and a class with none keeps its scores.
Only the states that changed are written back, in the pass's transaction, so
a restart resumes where the last committed pass ended.

Memory: one ``DeviceStats`` per device the detector has seen (a few windows
of ``DetectorConfig.window`` numbers, about 2 KB in CPython at the defaults),
the same bound as the ``anomaly_stat`` table it mirrors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Connection

from hub.anomaly.records import load_stats
from hub.anomaly.stats import DeviceStats


@dataclass(slots=True)
class FleetState:
    """The detector's state as of ``cursor`` (the id of the newest verdict folded in)."""

    cursor: int
    stats: dict[str, DeviceStats] = field(default_factory=dict)
    by_class: dict[str, dict[str, DeviceStats]] = field(default_factory=dict)
    persisted: set[str] = field(default_factory=set)
    """Device ids that have an ``anomaly_stat`` row (insert or update)."""
    pending: set[str] = field(default_factory=set)
    """Classes to rescore at the next pass although nothing new arrives for them (just loaded, or a member
    was added after this pass scored them)."""
    known: dict[str, frozenset[str]] = field(default_factory=dict)
    """The acknowledged measurement sets the classes were last scored with."""
    devices_inputs: object = None
    """What device statuses were last decided on (open findings, policies, status counts)."""

    @classmethod
    def load(cls, conn: Connection, cursor: int) -> FleetState:
        """Every stored device state (a full read: at the first pass and after the memory was dropped)."""
        fleet = cls(cursor)
        for device in load_stats(conn).values():
            fleet.add(device)
        fleet.persisted = set(fleet.stats)
        fleet.pending = set(fleet.by_class)
        return fleet

    def add(self, device: DeviceStats) -> None:
        self.stats[device.device_id] = device
        self.by_class.setdefault(device.device_class, {})[device.device_id] = device

    def device(self, device_id: str, device_class: str, dirty: set[str]) -> DeviceStats:
        """The state of ``device_id`` in ``device_class`` (created, or moved from another class); the classes
        whose membership changed are added to ``dirty``."""
        device = self.stats.get(device_id)
        if device is None:
            device = DeviceStats(device_id, device_class)
            self.add(device)
            dirty.add(device_class)
        elif device.device_class != device_class:
            old = self.by_class.get(device.device_class, {})
            old.pop(device_id, None)
            if not old:
                self.by_class.pop(device.device_class, None)
            dirty.update((device.device_class, device_class))
            device.device_class = device_class
            self.by_class.setdefault(device_class, {})[device_id] = device
        return device

    def members(self, classes: Iterable[str]) -> dict[str, DeviceStats]:
        """The states of every device in ``classes``."""
        out: dict[str, DeviceStats] = {}
        for name in sorted(classes):
            out.update(self.by_class.get(name, {}))
        return out


def mutable(device: DeviceStats) -> tuple[object, ...]:
    """What scoring and the findings change in a state (compared before and after to know what to save)."""
    return device.in_step, device.late_since, tuple(sorted(device.armed.items()))
