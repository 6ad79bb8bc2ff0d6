"""Slow attacks: behaviour that passes every per-message check but shifts how a device behaves over time.

Each device reports on its own schedule (``SlowAttackDriver``), honest ones
every ``interval`` with a little jitter and a fixed phase; attackers follow
their plan:

- ``creeping-delay``: each interval is ``creep`` longer than the one before
  (a device held back a little more every time, e.g. while its traffic is
  being relayed and inspected); every report is still fresh and valid;
- ``rare-release``: a few devices of one class that run an older release that
  is still approved (1.1.0 while the class runs 1.2.0) come online together
  after ``rare_after`` intervals. (An in-place downgrade would be refused by
  the hub's per-device security-version high-water mark; devices appearing
  with it are what no per-message rule notices);
- ``boot-loop``: the device reboots before every ``reboot_every``-th report,
  so its boot count climbs much faster than its peers'.

The schedule is deterministic in the seed; the driver only moves bytes
through ``Fleet.publish_device``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from device_sim import firmware, keys
from device_sim.device import SimDevice
from device_sim.fleet import Fleet
from device_sim.profiles import build_fleet

Clock = Callable[[], float]


class SlowAttack(StrEnum):
    CREEPING_DELAY = "creeping-delay"
    RARE_RELEASE = "rare-release"
    BOOT_LOOP = "boot-loop"


@dataclass(frozen=True, slots=True)
class SlowAttackSettings:
    creep: float = 0.06
    """Creeping delay: each interval is this fraction longer than the one before."""
    rare_version: str = "1.1.0"
    rare_after: float = 15.0
    """Rare release: intervals of silence before the devices come online (together)."""
    reboot_every: int = 3
    jitter: float = 0.1
    """Every device's interval varies uniformly by +-this fraction (network and clock noise)."""


def build_slow_attack_fleet(
    n: int, attacks: Mapping[SlowAttack, int], *, seed: str = keys.DEFAULT_SEED,
    settings: SlowAttackSettings | None = None,
) -> tuple[list[SimDevice], dict[str, SlowAttack]]:
    """``n`` honest devices (classes alternating) of which some are given slow attacks.

    Rare-release devices all come from the first class (to be rare together), creeping-delay devices
    from the second, boot-loop devices from the first after the rare ones. Deterministic in its inputs.
    """
    settings = settings or SlowAttackSettings()
    devices = build_fleet(n, "honest", seed)
    by_class: dict[str, list[int]] = {}
    for i, d in enumerate(devices):
        by_class.setdefault(d.device_class, []).append(i)
    first, second = firmware.DEVICE_CLASSES[0], firmware.DEVICE_CLASSES[1 % len(firmware.DEVICE_CLASSES)]
    pools = {SlowAttack.RARE_RELEASE: by_class.get(first, []), SlowAttack.BOOT_LOOP: by_class.get(first, []),
             SlowAttack.CREEPING_DELAY: by_class.get(second, [])}
    plan: dict[str, SlowAttack] = {}
    taken: set[int] = set()
    for attack in (SlowAttack.RARE_RELEASE, SlowAttack.CREEPING_DELAY, SlowAttack.BOOT_LOOP):
        free = [i for i in pools[attack] if i not in taken]
        wanted = attacks.get(attack, 0)
        if wanted > len(free):
            raise ValueError(f"not enough {attack.value} candidates among {n} devices")
        spread = free[::3]  # spread out over the class rather than the first few ids
        picks = spread[:wanted] if len(spread) >= wanted else free[:wanted]
        for i in picks:
            taken.add(i)
            plan[devices[i].device_id] = attack
            if attack is SlowAttack.RARE_RELEASE:
                d = devices[i]
                devices[i] = SimDevice(d.device_id, d.device_class, d.profile, seed=seed,
                                       version=settings.rare_version)
    return devices, plan


class SlowAttackDriver:
    """Publishes every device of ``fleet`` on its own schedule (see the module docstring)."""

    def __init__(self, fleet: Fleet, plan: Mapping[str, SlowAttack], interval: float, *,
                 settings: SlowAttackSettings | None = None, seed: str = keys.DEFAULT_SEED,
                 clock: Clock = time.monotonic) -> None:
        self.fleet = fleet
        self.plan = dict(plan)
        self.interval = interval
        self.settings = settings or SlowAttackSettings()
        self._clock = clock
        self._random = random.Random(seed)
        self._next: dict[str, float] = {}
        self._period: dict[str, float] = {}
        self._reports: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0

    def begin(self, now: float) -> None:
        """Fix every device's first report time: a phase spread over one interval (rare ones much later)."""
        count = max(1, len(self.fleet.devices))
        for i, device in enumerate(self.fleet.devices):
            first = now + self.interval * i / count
            if self.plan.get(device.device_id) is SlowAttack.RARE_RELEASE:
                first = now + self.interval * self.settings.rare_after + 0.02 * i / count
            self._next[device.device_id] = first
            self._period[device.device_id] = self.interval
            self._reports[device.device_id] = 0

    def step(self, now: float) -> int:
        """Publish every device that is due at ``now``; returns how many evidence messages went out."""
        if not self._next:
            self.begin(now)
        sent = 0
        for device in self.fleet.devices:
            device_id = device.device_id
            if now < self._next[device_id]:
                continue
            attack = self.plan.get(device_id)
            count = self._reports[device_id]
            if attack is SlowAttack.BOOT_LOOP and count % self.settings.reboot_every == self.settings.reboot_every - 1:
                device.reboot()
            sent += self.fleet.publish_device(device_id)
            self._reports[device_id] = count + 1
            if attack is SlowAttack.CREEPING_DELAY:
                self._period[device_id] *= 1 + self.settings.creep
            noise = 1 + self._random.uniform(-self.settings.jitter, self.settings.jitter)
            self._next[device_id] = max(self._next[device_id] + self._period[device_id] * noise, now)
        self.published += sent
        return sent

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="slow-attack-driver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        tick = max(0.002, self.interval / 40)
        while not self._stop.is_set():
            self.step(self._clock())
            self._stop.wait(tick)

    def __enter__(self) -> SlowAttackDriver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
