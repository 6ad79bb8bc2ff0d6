"""The HTTP API on a running hub worker, through the real Mosquitto broker and database.

The result endpoint's bytes are decoded here from the standards, not with the hub's code: COSE_Sign1
(RFC 9052 §4.2: tag 18, [protected: bstr, unprotected: map, payload: bstr, signature: bstr], signed over
Sig_structure ["Signature1", protected, external_aad, payload], §4.4; ES256 signatures are r || s, §2.1 of
RFC 9053) carrying an EAR claims set (draft-ietf-rats-ear: eat_profile 265, submods 266 with ear.status 1000
and ear.trustworthiness-vector 1001).
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cbor2
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from device_sim.fleet import Fleet
from hub.broker.process import MosquittoProcess, free_port
from hub.cli.main import cli
from hub.server.api.tokens import create_token
from hub.server.localhub import DEMO_OPERATOR_KEY, LocalHub
from tests.e2e import HubEnv, make_env
from tests.test_api_jwt import cwt_as_jwt_claims, decode_jwt

pytestmark = pytest.mark.broker

EAR_PROFILE = "tag:github.com,2023:veraison/ear"


class Api:
    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token

    def call(self, method: str, path: str, body: object = None,
             accept: str = "application/json") -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Authorization": f"Bearer {self.token}", "Accept": accept}
            data = None
            if body is not None:
                data, headers["Content-Type"] = json.dumps(body), "application/json"
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheader("content-type", ""), response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: object = None) -> Any:
        status, _, raw = self.call(method, path, body)
        assert status == 200, raw
        return json.loads(raw)


def decode_result(raw: bytes, hub_key: ec.EllipticCurvePublicKey) -> dict[int, Any]:
    """COSE_Sign1 per RFC 9052 §4.2, ES256 verified per §4.4 / RFC 9053 §2.1; returns the EAR claims."""
    item = cbor2.loads(raw)
    assert isinstance(item, cbor2.CBORTag) and item.tag == 18
    protected, unprotected, payload, signature = item.value
    assert isinstance(protected, bytes) and isinstance(unprotected, Mapping) and isinstance(payload, bytes)
    header = cbor2.loads(protected)
    assert header[1] == -7  # alg ES256, in the protected header
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    assert len(signature) == 64
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    hub_key.verify(der, to_be_signed, ec.ECDSA(hashes.SHA256()))
    claims = cbor2.loads(payload)
    assert claims[265] == EAR_PROFILE and isinstance(claims[266], Mapping)
    return dict(claims)


def wait_until(predicate: Any, timeout: float, fleet: Fleet | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if fleet is not None:
            fleet.publish_round()
            fleet.flush(5)
        time.sleep(0.2)
    return False


def hub_env(broker: MosquittoProcess, tmp_path: Path, mix: str) -> tuple[HubEnv, int]:
    port = free_port()
    return make_env(broker, tmp_path, len(mix.split(",")) if ":" not in mix else
                    sum(int(p.split(":")[1]) for p in mix.split(",")), mix, metrics_port=port,
                    anomaly_interval_s=0.0), port


def test_results_and_actions_through_the_broker(broker: MosquittoProcess, tmp_path: Path) -> None:
    env, port = hub_env(broker, tmp_path, "honest:2,tampered:1")
    honest = next(d for d in env.devices if d.profile.value == "honest")
    tampered = next(d for d in env.devices if d.profile.value == "tampered")
    store = env.store()
    token, _ = create_token(store, "relying-party", "operate", ttl_s=None)
    store.close()
    api = Api(port, token)
    hub_key = env.keys.public_key
    assert isinstance(hub_key, ec.EllipticCurvePublicKey)
    with LocalHub(env.settings), Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        assert fleet.wait_for_epoch(10) is not None
        status = lambda d: api.json("GET", f"/v1/devices/{d.device_id}")["status"]  # noqa: E731
        assert wait_until(lambda: status(honest) == "trusted" and status(tampered) == "quarantined", 30, fleet)

        code, content_type, raw = api.call("GET", f"/v1/devices/{honest.device_id}/result",
                                           accept="application/eat+cwt")
        assert code == 200 and content_type == "application/eat+cwt"
        claims = decode_result(raw, hub_key)
        assert claims[2] == honest.device_id and claims[266]["firmware"][1000] == 2  # affirming
        bad = decode_result(api.call("GET", f"/v1/devices/{tampered.device_id}/result", accept="*/*")[2], hub_key)
        # The same standing result as a JWT EAR (decoder written from RFC 7515/7519 in test_api_jwt.py).
        code, content_type, token = api.call("GET", f"/v1/devices/{tampered.device_id}/result",
                                             accept="application/eat+jwt")
        assert code == 200 and content_type == "application/eat+jwt"
        as_jwt = decode_jwt(token.decode("ascii"), hub_key)[1]
        assert as_jwt == cwt_as_jwt_claims(bad) and as_jwt["submods"]["firmware"]["ear.status"] == "contraindicated"
        assert bad[266]["firmware"][1000] == 96  # contraindicated

        # The CLI verifies the same bytes, and refuses them with one flipped bit.
        result_file = tmp_path / "result.cbor"
        result_file.write_bytes(raw)
        base = ["--state-dir", str(env.settings.state_dir), "--database-url", env.settings.effective_database_url]
        environ = {"ATTEST_HUB_OPERATOR_KEYS": str(DEMO_OPERATOR_KEY)}
        ok = CliRunner().invoke(cli, [*base, "result", "verify", str(result_file), "--json"], env=environ)
        assert ok.exit_code == 0, ok.output
        assert json.loads(ok.output)["submods"]["firmware"]["status"] == "affirming"
        by_device = CliRunner().invoke(cli, [*base, "result", "verify", "--device", honest.device_id], env=environ)
        assert by_device.exit_code == 0 and "firmware: affirming" in by_device.output
        flipped = bytearray(raw)
        flipped[-1] ^= 1
        result_file.write_bytes(bytes(flipped))
        refused = CliRunner().invoke(cli, [*base, "result", "verify", str(result_file)], env=environ)
        assert refused.exit_code == 1 and "not a result signed by this hub" in refused.output

        # Actions reach the device through the broker as signed commands.
        done = api.json("POST", f"/v1/devices/{honest.device_id}/quarantine", {"reason": "field inspection"})
        assert done["delivered"] is True and done["actor"] == "token:relying-party"
        assert wait_until(lambda: honest.quarantined, 10)
        api.json("POST", f"/v1/devices/{honest.device_id}/release", {"reason": "inspected, fine"})
        assert wait_until(lambda: not honest.quarantined, 10)
        assert wait_until(lambda: status(honest) == "trusted", 20, fleet)
        challenge = api.json("POST", f"/v1/devices/{honest.device_id}/challenge")
        assert challenge["delivered"] is True

        def answered() -> bool:
            claims = decode_result(api.call("GET", f"/v1/devices/{honest.device_id}/result", accept="*/*")[2], hub_key)
            return claims.get(10) == bytes.fromhex(challenge["nonce"])

        assert wait_until(answered, 15)
