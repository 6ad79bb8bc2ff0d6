"""The data-batch vectors (tests/vectors/data) against the hub's verifier, and the doc's example."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from hub.schemes.base import EvidenceError, TrustAnchor
from hub.schemes.data import DataScheme

ROOT = Path(__file__).resolve().parent.parent
VECTORS = sorted((ROOT / "tests" / "vectors" / "data").glob("*.json"))


def _anchor(vector: dict[str, Any]) -> TrustAnchor:
    key = load_pem_public_key(vector["public_key_pem"].encode())
    return TrustAnchor(vector["device_id"], vector["device_class"], key,  # type: ignore[arg-type]
                       bytes.fromhex(vector["anchor_ueid_hex"]))


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_vector(path: Path) -> None:
    vector = json.loads(path.read_text())
    raw = bytes.fromhex(vector["cose_hex"])
    if vector["expected"] == "valid":
        claims = DataScheme().verify(raw, _anchor(vector))
        assert claims.dedup_key.startswith("data:3:")
        return
    with pytest.raises(EvidenceError) as err:
        DataScheme().verify(raw, _anchor(vector))
    assert err.value.reason == vector["reason"]
    assert err.value.authenticated is vector["authenticated"]


def test_there_are_valid_and_invalid_vectors() -> None:
    kinds = {json.loads(p.read_text())["expected"] for p in VECTORS}
    assert kinds == {"valid", "invalid"} and len(VECTORS) >= 8


def test_the_vectors_regenerate_byte_for_byte() -> None:
    script = ROOT / "tests" / "vectors" / "data" / "generate.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_documented_example_is_the_linked_batch_vector() -> None:
    doc = (ROOT / "docs" / "schemes" / "data.md").read_text()
    vector = json.loads((ROOT / "tests" / "vectors" / "data" / "batch-2-linked.json").read_text())
    assert vector["cose_hex"] in doc.replace("\n", "")
