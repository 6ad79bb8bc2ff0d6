"""Attestation results as EAR consumers read them, checked with decoders written here from the CDDL.

Profile ``tag:github.com,2023:veraison/ear`` (draft-fv-rats-ear-02, section 3 CDDL; the veraison/ear
libraries implement it):

    EAR = {
      eat.profile (265) => "tag:github.com,2023:veraison/ear"
      iat (6) => int
      ear.verifier-id (1004) => { ? developer (0) => tstr, ? build (1) => tstr }
      ? ear.raw-evidence (1002) => bstr
      eat.submods (266) => { + tstr => EAR-appraisal }
      ? eat_nonce (10) => bstr .size (8..64)             ; JSON: tstr .size (10..74)
      * $$ear-extension
    }
    EAR-appraisal = {
      ear.status (1000) => 0 / 2 / 32 / 96                 ; JSON: "none" / "affirming" / ...
      ? ear.trustworthiness-vector (1001) => { ? 0..7 => -128..127 }   ; JSON: claim names
      ? ear.appraisal-policy-id (1003) => tstr
      * $$ear-appraisal-extension
    }

The JWT form carries the same claims under the JSON names (``eat_profile``, ``iat``, ``ear.verifier-id``
with ``build``/``developer``, ``submods``, ``ear.status``, ``ear.trustworthiness-vector``,
``ear.appraisal-policy-id``, ``eat_nonce``). Neither decoder uses the hub's own code.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from helpers import HubEnv, env_fixture, incoming, only, publishes_on, run_cli

PROFILE = "tag:github.com,2023:veraison/ear"
TIERS = {0: "none", 2: "affirming", 32: "warning", 96: "contraindicated"}
TV_NAMES = ("instance-identity", "configuration", "executables", "file-system", "hardware", "runtime-opaque",
            "storage-opaque", "sourced-data")
EAR_TOP_KEYS = {265, 6, 1004, 1002, 266, 10}
A = "smart-meter-0001"


# --- decoders written from the CDDL above -------------------------------------------------------


def _verify_es256(public: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> None:
    assert len(signature) == 64, "ES256 signature is r || s, 32 bytes each"
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public.verify(der, data, ec.ECDSA(hashes.SHA256()))


def decode_cwt_ear(raw: bytes, public: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """COSE_Sign1 (tag 18, RFC 9052 4.4), ES256 (-7) in the protected header; the EAR checked against the
    CDDL and returned in a neutral form (names as in the JSON serialization)."""
    tag = cbor2.loads(raw)
    assert isinstance(tag, cbor2.CBORTag) and tag.tag == 18
    protected, unprotected, payload, signature = tag.value
    header = cbor2.loads(protected)
    assert header[1] == -7 and 1 not in unprotected
    assert header[3] == "application/eat+cwt"
    _verify_es256(public, signature, cbor2.dumps(["Signature1", protected, b"", payload]))
    claims = cbor2.loads(payload)
    assert isinstance(claims, dict)
    for key in claims:
        assert isinstance(key, int), key
        assert key in EAR_TOP_KEYS or key == 2 or key < -65536, f"claim {key} is neither EAR, sub nor private-use"
    assert claims[265] == PROFILE
    assert type(claims[6]) is int
    vid = claims[1004]
    assert isinstance(vid, dict) and set(vid) <= {0, 1} and all(isinstance(v, str) for v in vid.values())
    submods = claims[266]
    assert isinstance(submods, dict) and submods and all(isinstance(k, str) for k in submods)
    out: dict[str, Any] = {"eat_profile": claims[265], "iat": claims[6],
                           "verifier": {"developer": vid.get(0), "build": vid.get(1)}, "submods": {}}
    for name, appraisal in submods.items():
        assert isinstance(appraisal, dict) and set(appraisal) - {1000, 1001, 1003} == set()
        status = appraisal[1000]
        assert type(status) is int and status in TIERS
        decoded: dict[str, Any] = {"status": TIERS[status]}
        if 1001 in appraisal:
            vector = appraisal[1001]
            assert isinstance(vector, dict) and vector
            assert all(type(k) is int and 0 <= k <= 7 and type(v) is int and -128 <= v <= 127
                       for k, v in vector.items())
            decoded["vector"] = {TV_NAMES[k]: v for k, v in vector.items()}
        if 1003 in appraisal:
            assert isinstance(appraisal[1003], str), "ear.appraisal-policy-id is one text string in this profile"
            decoded["policy"] = appraisal[1003]
        out["submods"][name] = decoded
    if 10 in claims:
        assert isinstance(claims[10], bytes) and 8 <= len(claims[10]) <= 64
        out["nonce"] = claims[10]
    if 2 in claims:
        out["sub"] = claims[2]
    return out


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_jwt_ear(token: str, public: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """A JWS compact serialization (RFC 7515 7.1), ES256 (RFC 7518 3.4); the EAR in its JSON form."""
    head, body, sig = token.split(".")
    assert "=" not in token, "base64url without padding"
    header = json.loads(_b64url(head))
    assert header["alg"] == "ES256" and header.get("typ") == "JWT"
    _verify_es256(public, _b64url(sig), f"{head}.{body}".encode())
    claims = json.loads(_b64url(body))
    assert claims["eat_profile"] == PROFILE
    assert type(claims["iat"]) is int
    vid = claims["ear.verifier-id"]
    assert set(vid) == {"build", "developer"} and all(isinstance(v, str) for v in vid.values())
    out: dict[str, Any] = {"eat_profile": claims["eat_profile"], "iat": claims["iat"],
                           "verifier": {"developer": vid["developer"], "build": vid["build"]}, "submods": {}}
    for name, appraisal in claims["submods"].items():
        known = {"ear.status", "ear.trustworthiness-vector", "ear.appraisal-policy-id"}
        assert set(appraisal) - known == set(), set(appraisal) - known
        assert appraisal["ear.status"] in TIERS.values()
        decoded: dict[str, Any] = {"status": appraisal["ear.status"]}
        if "ear.trustworthiness-vector" in appraisal:
            vector = appraisal["ear.trustworthiness-vector"]
            assert set(vector) <= set(TV_NAMES) and all(type(v) is int and -128 <= v <= 127 for v in vector.values())
            decoded["vector"] = vector
        if "ear.appraisal-policy-id" in appraisal:
            assert isinstance(appraisal["ear.appraisal-policy-id"], str)
            decoded["policy"] = appraisal["ear.appraisal-policy-id"]
        out["submods"][name] = decoded
    if "eat_nonce" in claims:
        nonce = claims["eat_nonce"]
        assert isinstance(nonce, str) and 10 <= len(nonce) <= 74
        out["nonce"] = _b64url(nonce)
    if "sub" in claims:
        out["sub"] = claims["sub"]
    return out


# --- the hub's results ----------------------------------------------------------------------------


env = env_fixture(A)


def hub_public(env: HubEnv) -> ec.EllipticCurvePublicKey:
    key = env.keys.public_key
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def test_published_result_is_a_cwt_ear_with_every_claim_as_the_cddl_says(env: HubEnv) -> None:
    nonce = env.epoch_nonce
    outcome = env.pipeline().process([incoming(A, env.evidence(A, env.claims(A, nonce=nonce)))])
    [message] = publishes_on(outcome, "result")
    ear = decode_cwt_ear(message.payload, hub_public(env))
    policy = env.verdicts(A)[-1]["policy_ref"]
    assert ear == {
        "eat_profile": PROFILE,
        "iat": ear["iat"],
        "verifier": {"developer": "fleet-attest.org", "build": "fleet-attestation-hub 0.1.0"},
        "submods": {"firmware": {"status": "affirming", "policy": policy,
                                 "vector": {"instance-identity": 2, "configuration": 2, "executables": 2,
                                            "hardware": 2}}},
        "nonce": nonce,
        "sub": A,
    }
    assert abs(ear["iat"] - int(env.verdicts(A)[-1]["received_at"])) == 0


def test_cli_shows_the_standing_result_as_jwt_and_cwt_with_the_same_claims(env: HubEnv, tmp_path: Path) -> None:
    outcome = env.pipeline().process([incoming(A, env.evidence(A))])
    published = decode_cwt_ear(publishes_on(outcome, "result")[0].payload, hub_public(env))
    jwt = run_cli(env, "result", "show", A, "--format", "jwt")
    assert jwt.exit_code == 0, jwt.output
    from_jwt = decode_jwt_ear(jwt.stdout.strip(), hub_public(env))
    out = tmp_path / "ear.cbor"
    cwt = run_cli(env, "result", "show", A, "--format", "cwt", "--out", str(out))
    assert cwt.exit_code == 0, cwt.output
    from_cwt = decode_cwt_ear(bytes.fromhex(cwt.stdout.strip()), hub_public(env))
    assert out.read_bytes() == bytes.fromhex(cwt.stdout.strip())
    published.pop("nonce")  # the stored verdict does not keep the evidence's nonce
    assert from_jwt == from_cwt == published


def test_jwt_claims_are_named_as_ear_libraries_read_them(env: HubEnv) -> None:
    """The field names veraison/ear (Go), python-ear and arc look up, checked on the raw JSON."""
    env.pipeline().process([incoming(A, env.evidence(A))])
    shown = run_cli(env, "result", "show", A, "--json")
    assert shown.exit_code == 0, shown.output
    shown_json = json.loads(shown.stdout)
    assert shown_json["media_type"] == 'application/eat+jwt; eat_profile="tag:github.com,2023:veraison/ear"'
    token = shown_json["token"]
    claims = json.loads(_b64url(token.split(".")[1]))
    assert {"eat_profile", "iat", "ear.verifier-id", "submods"} <= set(claims)
    appraisal = claims["submods"]["firmware"]
    assert appraisal["ear.status"] == "affirming"
    assert appraisal["ear.trustworthiness-vector"]["instance-identity"] == 2
    assert isinstance(appraisal["ear.appraisal-policy-id"], str)
    assert claims["ear.verifier-id"] == {"build": "fleet-attestation-hub 0.1.0", "developer": "fleet-attest.org"}


def test_result_show_for_a_device_without_a_result_fails(env: HubEnv) -> None:
    result = run_cli(env, "result", "show", A)
    assert result.exit_code == 1 and "no attestation result" in result.output


def test_a_rejected_result_still_decodes(env: HubEnv) -> None:
    outcome = env.pipeline().process([incoming(A, env.evidence(A, env.claims(A, nonce=b"x" * 32)))])
    decision = only(outcome)
    assert decision.status == "rejected"
    ear = decode_cwt_ear(publishes_on(outcome, "result")[0].payload, hub_public(env))
    assert ear["submods"]["firmware"]["status"] == "contraindicated"


VECTORS = sorted((Path(__file__).parent / "vectors" / "results").glob("valid-*.json"))


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_result_vectors_decode_to_the_same_ear_as_cwt_and_as_jwt(path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    vector = json.loads(path.read_text())
    key = load_pem_public_key(vector["public_key_pem"].encode())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    from_cwt = decode_cwt_ear(bytes.fromhex(vector["cose_hex"]), key)
    assert decode_jwt_ear(vector["jwt"], key) == from_cwt
    assert from_cwt["verifier"] == {"developer": "fleet-attest.org", "build": "fleet-attestation-hub 0.1.0"}


def test_unauthenticated_evidence_gets_the_policy_ref_of_no_policy_as_documented(env: HubEnv) -> None:
    """docs/PROTOCOL.md and the rejected example in EXAMPLES.md: "?@0" when no policy was applied."""
    raw = bytearray(env.evidence(A))
    raw[-1] ^= 1  # the signature no longer verifies
    outcome = env.pipeline().process([incoming(A, bytes(raw))])
    ear = decode_cwt_ear(publishes_on(outcome, "result")[0].payload, hub_public(env))
    assert ear["submods"]["firmware"]["policy"] == "?@0"
    documented = json.loads((Path(__file__).parent / "vectors" / "results" / "valid-rejected.json").read_text())
    assert documented["expected_result"]["policy_ref"] == "?@0"
