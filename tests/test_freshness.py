"""Stateless epoch and challenge nonces (hub.crypto.freshness)."""

from __future__ import annotations

import pytest

from hub import wire
from hub.crypto.freshness import NONCE_SIZE, challenge_nonce, check_nonce, epoch_nonce

SECRET = b"s" * 32
DEVICE = "smart-meter-0001"


@pytest.mark.parametrize("epoch", [10, 9])
def test_epoch_nonce_current_and_previous_accepted(epoch: int) -> None:
    check = check_nonce(SECRET, epoch_nonce(SECRET, epoch), DEVICE, 10)
    assert check.ok and check.kind == "epoch" and check.epoch == epoch


@pytest.mark.parametrize("epoch", [8, 0])
def test_older_epoch_is_stale(epoch: int) -> None:
    check = check_nonce(SECRET, epoch_nonce(SECRET, epoch), DEVICE, 10)
    assert not check.ok and "stale" in check.problem


def test_future_epoch_refused() -> None:
    check = check_nonce(SECRET, epoch_nonce(SECRET, 11), DEVICE, 10)
    assert not check.ok and "future" in check.problem


def test_epoch_nonce_is_not_device_bound_but_is_hub_bound() -> None:
    nonce = epoch_nonce(SECRET, 10)
    assert check_nonce(SECRET, nonce, "env-sensor-0009", 10).ok
    assert not check_nonce(b"t" * 32, nonce, DEVICE, 10).ok


@pytest.mark.parametrize("index", [9, 20, NONCE_SIZE - 1])
def test_forged_epoch_mac_refused(index: int) -> None:
    nonce = bytearray(epoch_nonce(SECRET, 10))
    nonce[index] ^= 0x01
    check = check_nonce(SECRET, bytes(nonce), DEVICE, 10)
    assert not check.ok and "not issued" in check.problem


def test_epoch_number_cannot_be_moved_forward_without_the_secret() -> None:
    """Re-labelling an old (stale) epoch nonce with the current epoch number breaks its MAC."""
    old = epoch_nonce(SECRET, 3)
    relabelled = old[:1] + (10).to_bytes(8, "big") + old[9:]
    assert not check_nonce(SECRET, relabelled, DEVICE, 10).ok


@pytest.mark.parametrize("epoch", [10, 9])
def test_challenge_nonce_accepted_for_its_device(epoch: int) -> None:
    check = check_nonce(SECRET, challenge_nonce(SECRET, DEVICE, epoch), DEVICE, 10)
    assert check.ok and check.kind == "challenge"


def test_challenge_nonce_bound_to_its_device() -> None:
    nonce = challenge_nonce(SECRET, DEVICE, 10)
    check = check_nonce(SECRET, nonce, "smart-meter-0002", 10)
    assert not check.ok and "for this device" in check.problem


def test_challenge_device_binding_has_no_prefix_ambiguity() -> None:
    """The device id is delimited in the MAC input, so "a" + "b\\x00..." cannot pose as "ab"."""
    nonce = challenge_nonce(SECRET, "ab", 10, bytes(7))
    assert not check_nonce(SECRET, nonce, "a", 10).ok


def test_stale_and_future_challenges_refused() -> None:
    assert not check_nonce(SECRET, challenge_nonce(SECRET, DEVICE, 8), DEVICE, 10).ok
    assert not check_nonce(SECRET, challenge_nonce(SECRET, DEVICE, 11), DEVICE, 10).ok


def test_forged_challenge_mac_refused() -> None:
    nonce = bytearray(challenge_nonce(SECRET, DEVICE, 10))
    nonce[12] ^= 0x80  # the random part is covered by the MAC
    assert not check_nonce(SECRET, bytes(nonce), DEVICE, 10).ok


def test_prefix_swap_refused() -> None:
    """An epoch nonce relabelled as a challenge (or back) does not verify as the other kind."""
    epoch = epoch_nonce(SECRET, 10)
    challenge = challenge_nonce(SECRET, DEVICE, 10)
    assert not check_nonce(SECRET, wire.NONCE_CHALLENGE_PREFIX + epoch[1:], DEVICE, 10).ok
    assert not check_nonce(SECRET, wire.NONCE_EPOCH_PREFIX + challenge[1:], DEVICE, 10).ok


@pytest.mark.parametrize("nonce", [None, b"", b"E" * 31, epoch_nonce(SECRET, 10) + b"\x00", b"X" + bytes(31)])
def test_wrong_length_missing_or_unknown_kind_refused(nonce: bytes | None) -> None:
    check = check_nonce(SECRET, nonce, DEVICE, 10)
    assert not check.ok and check.kind == "unknown"


def test_challenge_randomness_must_be_seven_bytes() -> None:
    with pytest.raises(ValueError):
        challenge_nonce(SECRET, DEVICE, 10, b"\x00" * 8)
    assert len(challenge_nonce(SECRET, DEVICE, 10)) == NONCE_SIZE
    assert challenge_nonce(SECRET, DEVICE, 10) != challenge_nonce(SECRET, DEVICE, 10)
