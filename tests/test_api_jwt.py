"""The device result endpoint's JWT form, decoded with decoders written here from the standards.

JWT (RFC 7519) in the JWS compact serialization (RFC 7515 §7.1): BASE64URL(header) "." BASE64URL(claims) "."
BASE64URL(signature), base64url without padding (§2); ES256 (RFC 7518 §3.4) signs the ASCII of the first two
parts with P-256/SHA-256 and the signature is R || S, 32 bytes each. The claims are an EAR in its JSON
serialization (draft-fv-rats-ear-02, profile ``tag:github.com,2023:veraison/ear``, the names veraison/ear
reads): ``eat_profile``, ``iat``, ``sub``, ``eat_nonce`` (base64url text), ``ear.verifier-id`` {``developer``,
``build``}, ``submods`` {name: {``ear.status`` ("none"/"affirming"/"warning"/"contraindicated"),
``ear.trustworthiness-vector`` {claim name: int}, ``ear.appraisal-policy-id``}}, plus the hub's
``fleet-attest.*`` extensions. Its CBOR twin (CWT: COSE_Sign1, RFC 9052 §4.2) uses keys 265, 6, 2, 10, 1004
{0, 1}, 266 {1000, 1001 {0..7}, 1003} and the private-use keys -65570..-65574; the test maps one onto the other
and requires the JWT to carry exactly the claims of the stored CWT.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from litestar.testing import TestClient

from hub.appraisal.messages import ResultClaims, sign_result
from hub.crypto.keys import generate_p256
from hub.reference.trust import Tier, TrustVector
from tests.api_env import ApiEnv, make_api_env

PROFILE = "tag:github.com,2023:veraison/ear"
STATUS = {0: "none", 2: "affirming", 32: "warning", 96: "contraindicated"}
VECTOR = ("instance-identity", "configuration", "executables", "file-system", "hardware", "runtime-opaque",
          "storage-opaque", "sourced-data")
EXTENSIONS = {-65570: "fleet-attest.problems", -65571: "fleet-attest.evidence-ref",
              -65572: "fleet-attest.manifest-ref", -65573: "fleet-attest.policy-ref", -65574: "fleet-attest.action"}
NONCE = bytes(range(40, 72))  # 32 bytes: within eat_nonce's 8..64


# --- decoders written from the RFCs and the EAR draft ----------------------------------------------


def b64url_decode(text: str) -> bytes:
    """RFC 7515 §2 / RFC 4648 §5, no padding allowed."""
    assert re.fullmatch(r"[A-Za-z0-9_-]*", text), "base64url alphabet, without padding"
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def es256_verify(public: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> None:
    """RFC 7518 §3.4 / RFC 9053 §2.1: R || S, 32 bytes each; InvalidSignature if it does not verify."""
    assert len(signature) == 64
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public.verify(der, data, ec.ECDSA(hashes.SHA256()))


def decode_jwt(token: str, public: ec.EllipticCurvePublicKey) -> tuple[dict[str, Any], dict[str, Any]]:
    """RFC 7519 §7.2 validation of a JWS-secured JWT: three parts, JOSE header alg ES256 (never "none"),
    signature over ``header.payload``; returns (header, claims)."""
    parts = token.split(".")
    assert len(parts) == 3
    header = json.loads(b64url_decode(parts[0]))
    assert header["alg"] == "ES256" and header.get("typ") == "JWT" and isinstance(header.get("kid"), str)
    es256_verify(public, b64url_decode(parts[2]), f"{parts[0]}.{parts[1]}".encode("ascii"))
    claims = json.loads(b64url_decode(parts[1]).decode("utf-8"))
    assert isinstance(claims, dict)
    return header, claims


def decode_cwt(raw: bytes, public: ec.EllipticCurvePublicKey) -> dict[int, Any]:
    """COSE_Sign1 (tag 18) with ES256 (-7) protected, verified over ["Signature1", protected, h'', payload]."""
    item = cbor2.loads(raw)
    assert isinstance(item, cbor2.CBORTag) and item.tag == 18
    protected, _unprotected, payload, signature = item.value
    assert cbor2.loads(protected)[1] == -7
    es256_verify(public, signature, cbor2.dumps(["Signature1", protected, b"", payload]))
    claims = cbor2.loads(payload)
    assert isinstance(claims, dict)
    return claims


def cwt_as_jwt_claims(cwt: Mapping[int, Any]) -> dict[str, Any]:
    """The EAR's CBOR claims under their JSON names (every key mapped; an unknown one fails)."""
    out: dict[str, Any] = {}
    for key, value in cwt.items():
        if key == 265:
            out["eat_profile"] = value
        elif key == 6:
            out["iat"] = value
        elif key == 2:
            out["sub"] = value
        elif key == 10:
            out["eat_nonce"] = base64.urlsafe_b64encode(value).rstrip(b"=").decode()
        elif key == 1004:
            assert set(value) <= {0, 1}
            out["ear.verifier-id"] = {{0: "developer", 1: "build"}[k]: v for k, v in value.items()}
        elif key == 266:
            submods: dict[str, Any] = {}
            for name, appraisal in value.items():
                assert set(appraisal) <= {1000, 1001, 1003}
                entry: dict[str, Any] = {"ear.status": STATUS[appraisal[1000]]}
                if 1001 in appraisal:
                    entry["ear.trustworthiness-vector"] = {VECTOR[k]: v for k, v in appraisal[1001].items()}
                if 1003 in appraisal:
                    entry["ear.appraisal-policy-id"] = appraisal[1003]
                submods[name] = entry
            out["submods"] = submods
        else:
            out[EXTENSIONS[key]] = value
    return out


def check_jwt_ear(claims: Mapping[str, Any]) -> None:
    """Types of every claim as the EAR draft's JSON serialization gives them."""
    assert claims["eat_profile"] == PROFILE and type(claims["iat"]) is int and isinstance(claims["sub"], str)
    assert set(claims["ear.verifier-id"]) <= {"developer", "build"}
    if "eat_nonce" in claims:
        assert isinstance(claims["eat_nonce"], str) and 10 <= len(claims["eat_nonce"]) <= 74
        assert 8 <= len(b64url_decode(claims["eat_nonce"])) <= 64
    for appraisal in claims["submods"].values():
        assert appraisal["ear.status"] in STATUS.values()
        assert all(k in VECTOR and type(v) is int and -128 <= v <= 127
                   for k, v in appraisal.get("ear.trustworthiness-vector", {}).items())
        assert isinstance(appraisal.get("ear.appraisal-policy-id", ""), str)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ApiEnv]:
    env = make_api_env(tmp_path, n=3)
    yield env
    env.store.close()


@pytest.fixture
def client(env: ApiEnv) -> Iterator[TestClient]:  # type: ignore[type-arg]
    with TestClient(env.app) as c:
        yield c


def hub_public(env: ApiEnv) -> ec.EllipticCurvePublicKey:
    key = env.ctx.keys.public_key
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def store_result(env: ApiEnv, device_id: str, signed: bytes | None = None) -> bytes:
    """Keep a result for the device as the worker does after publishing it (quarantined, with a nonce)."""
    if signed is None:
        claims = ResultClaims(
            device_id=device_id, scheme="firmware",
            trust_vector=TrustVector(instance_identity=2, configuration=2, executables=96, hardware=2),
            tier=Tier.CONTRAINDICATED, issued_at=1_790_000_000, problems=("executables: bootloader digest differs",),
            evidence_ref="3:42", manifest_ref="env-sensor#7", policy_ref="env-sensor@2", action="quarantine",
            nonce=NONCE)
        signed = sign_result(claims, env.ctx.keys.signing_key, env.ctx.keys.kid)
    with env.store.transaction() as conn:
        env.store.save_results(conn, [{"device_id": device_id, "scheme": "firmware", "issued_at": 1_790_000_000,
                                       "signed": signed}])
    return signed


def get(client: TestClient, env: ApiEnv, device: str, accept: str) -> Any:  # type: ignore[type-arg]
    return client.get(f"/v1/devices/{device}/result", headers=env.auth(env.read) | {"Accept": accept})


# --- tests ----------------------------------------------------------------------------------------


def test_jwt_ear_carries_exactly_the_claims_of_the_stored_cwt(client: TestClient, env: ApiEnv) -> None:  # type: ignore[type-arg]
    device = env.device_ids[0]
    cwt = decode_cwt(store_result(env, device), hub_public(env))
    response = get(client, env, device, "application/eat+jwt")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/eat+jwt"
    assert "accept" in response.headers["vary"].lower()
    header, claims = decode_jwt(response.text, hub_public(env))
    assert header["kid"] == env.ctx.keys.kid.decode()
    check_jwt_ear(claims)
    assert claims == cwt_as_jwt_claims(cwt)
    assert claims["submods"] == {"firmware": {
        "ear.status": "contraindicated", "ear.appraisal-policy-id": "env-sensor@2",
        "ear.trustworthiness-vector": {"instance-identity": 2, "configuration": 2, "executables": 96, "hardware": 2}}}
    assert claims["ear.verifier-id"] == {"developer": "fleet-attest.org", "build": "fleet-attestation-hub 0.1.0"}
    assert b64url_decode(claims["eat_nonce"]) == NONCE and claims["iat"] == 1_790_000_000 and claims["sub"] == device
    assert claims["fleet-attest.action"] == "quarantine"


def test_the_test_decoder_refuses_a_jwt_with_a_changed_claim(client: TestClient, env: ApiEnv) -> None:  # type: ignore[type-arg]
    device = env.device_ids[0]
    store_result(env, device)
    head, body, sig = get(client, env, device, "application/eat+jwt").text.split(".")
    claims = json.loads(b64url_decode(body))
    claims["submods"]["firmware"]["ear.status"] = "affirming"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidSignature):
        decode_jwt(f"{head}.{forged}.{sig}", hub_public(env))
    with pytest.raises((AssertionError, binascii.Error, ValueError)):
        decode_jwt(f"{head}.{body}.{sig}==", hub_public(env))


@pytest.mark.parametrize(("accept", "served"), [
    ("application/eat+cwt", "application/eat+cwt"),
    ("application/eat+jwt", "application/eat+jwt"),
    (f'application/eat+jwt; eat_profile="{PROFILE}"', "application/eat+jwt"),
    ("*/*", "application/eat+cwt"),
    ("application/*", "application/eat+cwt"),
    ("", "application/eat+cwt"),
    ("application/eat+cwt;q=0.5, application/eat+jwt", "application/eat+jwt"),
    ("application/eat+jwt;q=0.4, application/eat+cwt;q=0.9", "application/eat+cwt"),
    ("*/*, application/eat+cwt;q=0", "application/eat+jwt"),
    ("text/html, application/eat+jwt;q=0.1", "application/eat+jwt"),
    ('application/eat+jwt; eat_profile="tag:example.com,2025:other", application/eat+cwt;q=0.2',
     "application/eat+cwt"),
])
def test_result_content_negotiation(client: TestClient, env: ApiEnv, accept: str, served: str) -> None:  # type: ignore[type-arg]
    device = env.device_ids[1]
    signed = store_result(env, device)
    response = get(client, env, device, accept)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == served
    if served == "application/eat+cwt":
        assert response.content == signed
    else:
        check_jwt_ear(decode_jwt(response.text, hub_public(env))[1])


@pytest.mark.parametrize("accept", ["application/json", "text/plain", "image/*", "application/eat+jwt;q=0",
                                    'application/eat+cwt; eat_profile="urn:other", application/eat+jwt;q=0'])
def test_result_types_not_offered_are_406_with_what_is(client: TestClient, env: ApiEnv, accept: str) -> None:  # type: ignore[type-arg]
    device = env.device_ids[1]
    store_result(env, device)
    response = get(client, env, device, accept)
    assert response.status_code == 406 and response.headers["content-type"].startswith("application/problem+json")
    assert "application/eat+jwt" in response.json()["detail"] and "application/eat+cwt" in response.json()["detail"]


def test_a_stored_result_that_does_not_verify_is_a_problem_not_a_crash(
        client: TestClient, env: ApiEnv) -> None:  # type: ignore[type-arg]
    device = env.device_ids[2]
    other = ResultClaims(device, "firmware", TrustVector(), Tier.NONE, 1, (), "1:1", None, "x@1", "none")
    store_result(env, device, sign_result(other, generate_p256(), b"other"))
    response = get(client, env, device, "application/eat+jwt")
    assert response.status_code == 500 and "cannot be read" in response.json()["detail"]


def test_console_device_page_links_the_jwt_download(client: TestClient, env: ApiEnv) -> None:  # type: ignore[type-arg]
    device = env.device_ids[0]
    cwt = decode_cwt(store_result(env, device), hub_public(env))
    assert client.get(f"/console/devices/{device}/result.jwt", follow_redirects=False).status_code == 303
    client.post("/console/login", data={"token": env.read})
    page = client.get(f"/console/devices/{device}").text
    assert f'href="/console/devices/{device}/result.jwt"' in page and "application/eat+jwt" in page
    download = client.get(f"/console/devices/{device}/result.jwt")
    assert download.status_code == 200 and download.headers["content-type"] == "application/eat+jwt"
    assert download.headers["content-disposition"] == f'attachment; filename="{device}.jwt"'
    assert decode_jwt(download.text, hub_public(env))[1] == cwt_as_jwt_claims(cwt)
    assert client.get(f"/console/devices/{env.device_ids[1]}/result.jwt").status_code == 404
