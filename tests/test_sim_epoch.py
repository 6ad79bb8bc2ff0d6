"""A device refuses an epoch announcement that is too old (docs/PROTOCOL.md, "Nonces and epochs"): a rogue
retained copy of a genuine old announcement must not make a booting device use a stale epoch."""

from __future__ import annotations

import cbor2

from device_sim.fleet import Fleet
from device_sim.profiles import build_fleet
from hub import wire
from hub.appraisal.messages import epoch_message
from hub.crypto.keys import generate_p256, public_pem

NOW = 1_767_225_600.0
KEY = generate_p256()


def announcement(epoch: int, iat: float) -> bytes:
    return epoch_message(epoch, b"E" + epoch.to_bytes(8, "big") + bytes(23), int(iat), KEY, b"kid")


def fleet(**kw: object) -> Fleet:
    return Fleet("127.0.0.1", 1, build_fleet(1, "honest:1", "epoch-age"), public_pem(KEY.public_key()).encode(),
                 connections=1, clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def test_an_announcement_older_than_two_periods_is_refused() -> None:
    sim = fleet()
    sim._on_epoch(announcement(41, NOW - 601))
    assert sim.epoch is None and sim.rejected_epochs == 1
    sim._on_epoch(announcement(42, NOW - 10))
    assert sim.epoch is not None and sim.epoch.epoch_id == 42


def test_an_announcement_older_than_the_adopted_one_is_refused_whatever_its_number() -> None:
    sim = fleet()
    sim._on_epoch(announcement(7, NOW - 5))
    sim._on_epoch(announcement(9, NOW - 100))  # a higher number, but announced before the adopted one
    assert sim.epoch is not None and sim.epoch.epoch_id == 7
    sim._on_epoch(announcement(1, NOW))  # a rebuilt hub starts again at 1, announced later: adopted
    assert sim.epoch is not None and sim.epoch.epoch_id == 1
    assert cbor2.loads(cbor2.loads(announcement(1, NOW)).value[2])[wire.IAT] == int(NOW)
