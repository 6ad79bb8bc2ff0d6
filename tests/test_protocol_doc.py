"""docs/ examples check out with only what the documents give (keys, nonces), as an independent device would."""

from __future__ import annotations

import re
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_pem_public_key

DOCS = Path(__file__).resolve().parents[1] / "docs"


def documented_device_key() -> ec.EllipticCurvePublicKey:
    examples = (DOCS / "EXAMPLES.md").read_text()
    section = examples.split("### device `vec-env-0001`", 1)[1]
    pem = re.search(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", section, re.S)
    assert pem is not None
    key = load_pem_public_key(pem.group(0).encode())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def documented_epoch_nonce() -> bytes:
    match = re.search(r"epoch 7 nonce: `([0-9a-f]{64})`", (DOCS / "EXAMPLES.md").read_text())
    assert match is not None
    return bytes.fromhex(match.group(1))


def test_the_data_batch_example_verifies_with_the_documented_key_and_nonce() -> None:
    doc = (DOCS / "schemes" / "data.md").read_text()
    example = doc.split("and the same message in hex", 1)[1].split("```")[1]
    raw = bytes.fromhex("".join(example.split()))
    protected, _unprotected, payload, signature = cbor2.loads(raw).value
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    documented_device_key().verify(der, to_be_signed, ec.ECDSA(hashes.SHA256()))  # raises if it does not verify
    assert cbor2.loads(payload)[10] == documented_epoch_nonce()
