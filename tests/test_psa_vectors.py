"""Every PSA token vector in tests/vectors/psa/ (built from RFC 9783's claim structure) against the hub scheme."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hub.crypto.keys import load_public_pem
from hub.reference import trust
from hub.reference.policy import Policy
from hub.schemes.base import AppraisalInputs, DeviceState, EvidenceError, TrustAnchor
from hub.schemes.psa import PsaClaims, PsaScheme

VECTORS = sorted((Path(__file__).parent / "vectors" / "psa").glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    assert set(vector) >= {"description", "cose_hex", "public_key_pem", "expected", "reason"}
    return vector


def test_the_vector_set_covers_valid_and_invalid_tokens() -> None:
    expected = [_load(p)["expected"] for p in VECTORS]
    assert expected.count("valid") >= 4 and expected.count("invalid") >= 20


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_vector(path: Path) -> None:
    vector = _load(path)
    anchor = TrustAnchor("psa-vector", "psa-vector", load_public_pem(vector["public_key_pem"]),
                         bytes.fromhex(vector["enrolled_instance_id_hex"]))
    raw = bytes.fromhex(vector["cose_hex"])
    if vector["expected"] == "invalid" and vector["reason"] != "lifecycle-not-secured":
        with pytest.raises(EvidenceError) as caught:
            PsaScheme().verify(raw, anchor)
        assert caught.value.reason == vector["reason"], caught.value
        return
    claims = PsaScheme().verify(raw, anchor)
    assert isinstance(claims.body, PsaClaims)
    assert claims.counter is None and claims.nonce == claims.body.nonce
    appraisal = PsaScheme().appraise(claims, AppraisalInputs(None, Policy("psa-vector"), DeviceState()))
    not_secured = appraisal.trust_vector.configuration == trust.CONFIG_CONTRAINDICATED
    assert not_secured == (vector["expected"] == "invalid"), appraisal.problems
