"""Regenerate the data-batch test vectors (tests/vectors/data/*.json), byte for byte.

    .venv/bin/python tests/vectors/data/generate.py          # write the files
    .venv/bin/python tests/vectors/data/generate.py --check  # exit 1 if any file differs
    .venv/bin/python tests/vectors/data/generate.py --show   # print the first vector as diag and hex

Batches come from the simulator's encoder (device_sim.telemetry) with the documented test key
of device ``vec-env-0001`` (docs/EXAMPLES.md "Test keys", label ``device-key/p256/vec-env-0001``),
its UEID, the documented epoch-7 nonce, a fixed boot and iat; the ECDSA signature is then
recomputed deterministically (RFC 6979) over the very same protected header and payload.
Each invalid vector has one defect.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from device_sim import keys
from device_sim.data_profiles import alter_record
from device_sim.telemetry import TelemetryChain
from hub import wire
from hub.crypto.freshness import epoch_nonce

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from tests.vectors.generate import EPOCH, NONCE_SECRET, device_key, device_ueid  # noqa: E402 (the documented keys)

DEVICE = "vec-env-0001"
DEVICE_CLASS = "env-sensor"
BOOTCOUNT = 3
T0 = 1767225600  # 2026-01-01T00:00:00Z
NONCE = epoch_nonce(NONCE_SECRET, EPOCH)  # docs/EXAMPLES.md: the epoch 7 nonce
_KEY = device_key(DEVICE)
assert isinstance(_KEY, ec.EllipticCurvePrivateKey)
KEY: ec.EllipticCurvePrivateKey = _KEY
UEID = device_ueid(DEVICE)


def _deterministic(raw: bytes) -> bytes:
    """The same COSE_Sign1 with an RFC 6979 signature over the same protected header and payload."""
    tag = cbor2.loads(raw)
    protected, unprotected, payload, _ = tag.value
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(KEY.sign(to_be_signed, ec.ECDSA(hashes.SHA256(), deterministic_signing=True)))
    return cbor2.dumps(cbor2.CBORTag(wire.COSE_SIGN1_TAG,
                                     [protected, unprotected, payload, r.to_bytes(32, "big") + s.to_bytes(32, "big")]))


def _parts(raw: bytes) -> list[Any]:
    return list(cbor2.loads(raw).value)


def _build(parts: list[Any]) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(wire.COSE_SIGN1_TAG, parts))


def _resign(raw: bytes, change: Callable[[dict[int, Any]], None]) -> bytes:
    parts = _parts(raw)
    claims = cbor2.loads(parts[2])
    change(claims)
    parts[2] = cbor2.dumps(claims)
    return _deterministic(_build(parts))


def _batches() -> tuple[bytes, bytes]:
    chain = TelemetryChain(DEVICE, DEVICE_CLASS, UEID, BOOTCOUNT)
    first = _deterministic(chain.next_batch(KEY, NONCE, T0 + 30, (BOOTCOUNT, 1)).raw)
    second = _deterministic(chain.next_batch(KEY, NONCE, T0 + 60, (BOOTCOUNT, 1)).raw)
    return first, second


def vectors() -> dict[str, dict[str, Any]]:
    first, second = _batches()
    bad_records = cbor2.dumps([[T0, "x"]])

    def strip(raw: bytes) -> bytes:
        parts = _parts(raw)
        parts[1] = {}
        return _build(parts)

    def flip_payload(raw: bytes) -> bytes:
        parts = _parts(raw)
        claims = cbor2.loads(parts[2])
        claims[wire.DATA_BATCH_SEQ] = 9
        parts[2] = cbor2.dumps(claims)
        return _build(parts)

    def malformed(raw: bytes) -> bytes:
        signed = _resign(raw, lambda c: c.__setitem__(wire.DATA_RECORDS_DIGEST,
                                                      [wire.SHA256, hashlib.sha256(bad_records).digest()]))
        parts = _parts(signed)
        parts[1] = {wire.DATA_RECORDS: bad_records}
        return _build(parts)

    cases: list[tuple[str, str, bytes, str, bool, str]] = [
        ("batch-1-genesis", "Batch 1 of boot 3: previous digest is the 32-byte genesis.", first, "valid", True, ""),
        ("batch-2-linked", "Batch 2: previous digest is SHA-256 of batch 1's signed payload.", second, "valid", True,
         ""),
        ("records-tampered", "A man in the middle added 1 to the first record's value; the signed digest no "
         "longer matches.", alter_record(second), "invalid", False, "records-tampered"),
        ("records-missing", "The records were stripped from the unprotected header.", strip(second), "invalid",
         False, "records-missing"),
        ("signed-claim-changed", "The batch seq was changed in the payload after signing.", flip_payload(second),
         "invalid", False, "bad-signature"),
        ("bad-records", "The device signed the digest of records that are not [time, metric, value].",
         malformed(second), "invalid", True, "bad-records"),
        ("wrong-profile", "eat_profile names the firmware profile.",
         _resign(second, lambda c: c.__setitem__(wire.EAT_PROFILE, wire.FIRMWARE_PROFILE)), "invalid", True,
         "wrong-profile"),
        ("prev-digest-short", "The previous batch digest is 31 bytes.",
         _resign(second, lambda c: c.__setitem__(wire.DATA_PREV, bytes(31))), "invalid", True, "bad-claim"),
        ("attestation-missing", "No attestation context claim (null is allowed, absence is not).",
         _resign(second, lambda c: c.pop(wire.DATA_ATTESTATION)), "invalid", True, "missing-claim"),
    ]
    pem = keys.public_key_pem(KEY).decode()
    out = {}
    for name, description, raw, expected, authenticated, reason in cases:
        out[name] = {
            "description": description,
            "kind": "data",
            "expected": expected,
            "reason": reason,
            "cose_hex": raw.hex(),
            "public_key_pem": pem,
            "device_id": DEVICE,
            "device_class": DEVICE_CLASS,
            "anchor_ueid_hex": UEID.hex(),
            "authenticated": authenticated,
        }
    return out


def diag(item: object, indent: int = 0) -> str:
    """CBOR diagnostic notation (RFC 8949 section 8), embedded CBOR shown as <<...>>."""
    pad = "  " * (indent + 1)
    if isinstance(item, cbor2.CBORTag):
        return f"{item.tag}({diag(item.value, indent)})"
    if isinstance(item, bytes):
        try:
            inner = cbor2.loads(item)
        except (cbor2.CBORDecodeError, ValueError):
            inner = None
        if isinstance(inner, (Mapping, list)) and len(item) > 2:
            return "<<" + diag(inner, indent) + ">>"
        return f"h'{item.hex()}'"
    if isinstance(item, Mapping):
        rows = [f"{pad}{diag(k)}: {diag(v, indent + 1)}" for k, v in item.items()]
        return "{\n" + ",\n".join(rows) + "\n" + "  " * indent + "}" if rows else "{}"
    if isinstance(item, (list, tuple)):
        if all(not isinstance(v, (Mapping, list, tuple, bytes)) for v in item):
            return "[" + ", ".join(diag(v) for v in item) + "]"
        return "[\n" + ",\n".join(pad + diag(v, indent + 1) for v in item) + "\n" + "  " * indent + "]"
    if item is None:
        return "null"
    if isinstance(item, bool):
        return "true" if item else "false"
    return json.dumps(item)


def main(argv: list[str]) -> int:
    written = vectors()
    if "--show" in argv:
        raw = bytes.fromhex(written["batch-2-linked"]["cose_hex"])
        print(diag(cbor2.loads(raw)))
        print(raw.hex())
        return 0
    stale = []
    for name, vector in written.items():
        path = HERE / f"{name}.json"
        text = json.dumps(vector, indent=2) + "\n"
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print("stale vectors: " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
