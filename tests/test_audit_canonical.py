"""The audit hash's canonical JSON: the direct assembly must equal json.dumps(sort_keys) byte for byte,
or chains written before and after it (and by ``attest-hub audit verify``) would disagree."""

from __future__ import annotations

import json
import random

import pytest

from hub.audit import _canonical, _canonical_fast, entry_hash

TEXTS = ["", "hub", "operator", "smart-meter-0001", 'quote " and \\ backslash', "tab\tnewline\n\x00\x1f\x7f",
         "ünïcödé ✓ 😀", "\ud800 lone surrogate", json.dumps({"a": [1, "b"], "problems": ["x \"y\""]})]


def _entries() -> list[dict[str, object]]:
    rng = random.Random(7)
    out: list[dict[str, object]] = []
    for _ in range(300):
        out.append({"id": rng.choice([1, 12345, 2**63 - 1, 0]), "at": rng.choice([0.0, 1.5, 1795826400.123456, 1e21]),
                    "actor": rng.choice(TEXTS), "action": rng.choice(TEXTS),
                    "device_id": rng.choice([*TEXTS, None]), "detail": rng.choice(TEXTS)})
    return out


@pytest.mark.parametrize("entry", _entries())
def test_fast_canonical_equals_json_dumps(entry: dict[str, object]) -> None:
    assert _canonical_fast(entry) == _canonical(entry)


@pytest.mark.parametrize("odd", [{"id": True}, {"id": 1.0}, {"actor": 3}, {"device_id": 7}, {"detail": {"a": 1}}])
def test_unusual_types_take_the_json_path(odd: dict[str, object]) -> None:
    entry: dict[str, object] = {"id": 1, "at": 1.0, "actor": "hub", "action": "verdict", "device_id": None,
                                "detail": "{}", **odd}
    assert _canonical_fast(entry) is None
    assert len(entry_hash("0" * 64, entry)) == 64
