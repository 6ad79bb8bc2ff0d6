"""The HTTP API in-process: authentication, scopes, tokens, paging, ids, problem details, actions, console forms.

Problem details are checked against RFC 9457 §3.1 (members type, title, status, detail, instance; media type
application/problem+json, §6.1). The broker path (results, release to trusted) is in test_api_broker.py.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from hub.server.api.tokens import check_token, create_token, revoke_token
from hub.store.db import AUDIT
from tests.api_env import ApiEnv, make_api_env


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ApiEnv]:
    env = make_api_env(tmp_path)
    yield env
    env.store.close()


@pytest.fixture
def client(env: ApiEnv) -> Iterator[TestClient]:  # type: ignore[type-arg]
    with TestClient(env.app) as c:
        yield c


def assert_problem(response: object, status: int) -> dict[str, object]:
    """RFC 9457 §3.1: a JSON object with these members, served as application/problem+json."""
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"].startswith("application/problem+json")  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert isinstance(body, dict)
    assert body["status"] == status and isinstance(body["title"], str) and isinstance(body["detail"], str)
    assert isinstance(body["type"], str) and isinstance(body["instance"], str)
    return body


def audit_rows(env: ApiEnv, action: str) -> list[dict[str, object]]:
    with env.store.reading() as conn:
        return [dict(r._mapping) for r in conn.execute(AUDIT.select().where(AUDIT.c.action == action))]


def test_no_credentials_is_401_with_a_bearer_challenge(client: TestClient, env: ApiEnv) -> None:  # type: ignore[type-arg]
    for path in ("/v1/devices", f"/v1/devices/{env.device_ids[0]}", "/v1/report", "/v1/audit", "/v1/manifests"):
        response = client.get(path)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert_problem(client.post(f"/v1/devices/{env.device_ids[0]}/quarantine", json={"reason": "x"}), 401)
    assert_problem(client.get("/v1/devices", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401)


def test_read_scope_cannot_act_and_operate_scope_is_audited_with_its_actor(
        client: TestClient, env: ApiEnv) -> None:  # type: ignore[type-arg]
    device = env.device_ids[0]
    body = assert_problem(client.post(f"/v1/devices/{device}/quarantine", json={"reason": "RMA"},
                                      headers=env.auth(env.read)), 403)
    assert "operate" in str(body["detail"])
    assert client.get(f"/v1/devices/{device}", headers=env.auth(env.read)).json()["status"] == "enrolled"

    done = client.post(f"/v1/devices/{device}/quarantine", json={"reason": "RMA 4711"}, headers=env.auth(env.operate))
    assert done.status_code == 200 and done.json()["actor"] == "token:ops"
    detail = client.get(f"/v1/devices/{device}", headers=env.auth(env.read)).json()
    assert detail["status"] == "quarantined"
    assert detail["commands"][0]["kind"] == "quarantine" and detail["commands"][0]["reason"] == "RMA 4711"
    assert detail["commands"][0]["outstanding"] is True
    entry = audit_rows(env, "quarantine")[-1]
    assert entry["actor"] == "token:ops" and entry["device_id"] == device
    assert json.loads(str(entry["detail"]))["reason"] == "RMA 4711"

    assert_problem(client.post(f"/v1/devices/{device}/quarantine", json={"reason": "again"},
                               headers=env.auth(env.operate)), 409)
    assert_problem(client.post(f"/v1/devices/{device}/release", json={"reason": " "},
                               headers=env.auth(env.operate)), 400)
    assert client.post(f"/v1/devices/{device}/release", json={"reason": "checked"},
                       headers=env.auth(env.operate)).status_code == 200
    assert audit_rows(env, "release")[-1]["actor"] == "token:ops"
    assert client.post(f"/v1/devices/{env.device_ids[1]}/revoke", json={"reason": "stolen"},
                       headers=env.auth(env.operate)).status_code == 200
    assert audit_rows(env, "revoke")[-1]["actor"] == "token:ops"
    # A challenge needs the hub's epoch: refused with a reason before the hub ever ran.
    assert_problem(client.post(f"/v1/devices/{device}/challenge", headers=env.auth(env.operate)), 409)
    assert_problem(client.post("/v1/devices/nobody-0001/quarantine", json={"reason": "x"},
                               headers=env.auth(env.operate)), 404)


def test_expired_revoked_malformed_and_wrong_tokens_are_refused(
        client: TestClient, env: ApiEnv) -> None:  # type: ignore[type-arg]
    expired, _ = create_token(env.store, "old", "operate", ttl_s=60, now=time.time() - 120)
    assert_problem(client.get("/v1/devices", headers=env.auth(expired)), 401)
    revoked, row = create_token(env.store, "gone", "operate", ttl_s=None)
    assert client.get("/v1/devices", headers=env.auth(revoked)).status_code == 200
    revoke_token(env.store, row["token_id"])
    assert_problem(client.get("/v1/devices", headers=env.auth(revoked)), 401)
    wrong_secret = env.read[:-4] + ("AAAA" if not env.read.endswith("AAAA") else "BBBB")
    for bad in (wrong_secret, env.read + "x", "ahk_000000000000_" + "A" * 43, "", "null"):
        assert_problem(client.get("/v1/devices", headers=env.auth(bad)), 401)
    assert [r["detail"] for r in audit_rows(env, "token-revoke")] == [json.dumps({"token": row["token_id"]},
                                                                                  separators=(",", ":"))]


def test_tokens_are_stored_only_as_hashes(env: ApiEnv) -> None:
    secret = env.operate.split("_", 2)[2]  # ahk_<id>_<secret>; the secret is base64url and may hold "_"
    assert len(secret) == 43
    database = (env.settings.state_dir / "hub.db").read_bytes()
    wal = env.settings.state_dir / "hub.db-wal"
    assert secret.encode() not in database + (wal.read_bytes() if wal.exists() else b"")
    principal = check_token(env.store, env.operate)
    assert principal is not None and principal.scope == "operate" and principal.actor == "token:ops"


def test_device_pages_cover_the_fleet_once_and_refuse_oversized_pages(
        client: TestClient, env: ApiEnv) -> None:  # type: ignore[type-arg]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "4"} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/devices", params=params, headers=env.auth(env.read)).json()
        seen += [d["device_id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == env.device_ids
    for limit in ("0", "501", "1000000", "-1"):
        assert_problem(client.get("/v1/devices", params={"limit": limit}, headers=env.auth(env.read)), 400)
    assert_problem(client.get("/v1/devices", params={"limit": "abc"}, headers=env.auth(env.read)), 400)
    assert_problem(client.get("/v1/devices", params={"cursor": "%%%"}, headers=env.auth(env.read)), 400)
    meters = client.get("/v1/devices", params={"class": "smart-meter"}, headers=env.auth(env.read)).json()["items"]
    assert meters and all(d["device_class"] == "smart-meter" for d in meters)
    client.post(f"/v1/devices/{env.device_ids[2]}/quarantine", json={"reason": "x"}, headers=env.auth(env.operate))
    held = client.get("/v1/devices", params={"status": "quarantined"}, headers=env.auth(env.read)).json()["items"]
    assert [d["device_id"] for d in held] == [env.device_ids[2]]
    prefix = client.get("/v1/devices", params={"q": "env-sensor"}, headers=env.auth(env.read)).json()["items"]
    assert prefix and all(d["device_id"].startswith("env-sensor") for d in prefix)
    never = client.get("/v1/devices", params={"seen_before": str(time.time())}, headers=env.auth(env.read)).json()
    assert len(never["items"]) == len(env.device_ids)  # none has been seen yet


@pytest.mark.parametrize("path", [
    "/v1/devices/..", "/v1/devices/%2e%2e", "/v1/devices/..%2F..%2Fetc%2Fpasswd", "/v1/devices/a%2Fb",
    "/v1/devices/%2e%2e/result", "/v1/devices/a%00b", "/v1/devices/%23", "/v1/devices/hub-w0",
    "/v1/devices/" + "x" * 300,
])
def test_path_traversal_and_odd_ids_get_a_problem_never_a_file_or_a_crash(
        client: TestClient, env: ApiEnv, path: str) -> None:  # type: ignore[type-arg]
    response = client.get(path, headers=env.auth(env.read))
    assert response.status_code in (400, 404), (path, response.status_code, response.text)
    assert_problem(response, response.status_code)
    assert "root:" not in response.text


def test_openapi_document_names_every_route_and_both_credentials(client: TestClient) -> None:  # type: ignore[type-arg]
    document = client.get("/v1/schema/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/v1/devices", "/v1/devices/{device_id}", "/v1/devices/{device_id}/result", "/v1/manifests",
        "/v1/policies", "/v1/report", "/v1/audit", "/v1/devices/{device_id}/quarantine",
        "/v1/devices/{device_id}/release", "/v1/devices/{device_id}/revoke", "/v1/devices/{device_id}/challenge"}
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer" and schemes["clientCertificate"]["type"] == "mutualTLS"
    listing = document["paths"]["/v1/devices"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {"class", "status", "firmware", "seen_after",
                                                          "seen_before", "cursor", "limit"}


def test_openapi_result_response_lists_both_negotiated_types(client: TestClient) -> None:  # type: ignore[type-arg]
    """A client generated from the document must know the JWT form exists (RFC 9110 §12.5.1 negotiation)."""
    document = client.get("/v1/schema/openapi.json").json()
    ok = document["paths"]["/v1/devices/{device_id}/result"]["get"]["responses"]["200"]
    assert set(ok["content"]) == {"application/eat+cwt", "application/eat+jwt"}


def test_result_is_406_for_types_not_offered_and_404_before_any(
        client: TestClient, env: ApiEnv) -> None:  # type: ignore[type-arg]
    device = env.device_ids[0]
    for accept in ("application/json", "text/html", "application/eat+jwt;q=0, application/eat+cwt;q=0"):
        body = assert_problem(client.get(f"/v1/devices/{device}/result",
                                         headers=env.auth(env.read) | {"Accept": accept}), 406)
        assert "application/eat+cwt" in str(body["detail"]) and "application/eat+jwt" in str(body["detail"])
    for accept in ("application/eat+jwt", "application/eat+cwt", "*/*"):
        assert_problem(client.get(f"/v1/devices/{device}/result", headers=env.auth(env.read) | {"Accept": accept}),
                       404)


def test_audit_export_streams_the_chain(client: TestClient, env: ApiEnv) -> None:  # type: ignore[type-arg]
    client.post(f"/v1/devices/{env.device_ids[0]}/quarantine", json={"reason": "x"}, headers=env.auth(env.operate))
    response = client.get("/v1/audit", headers=env.auth(env.read))
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert len(lines) >= len(env.device_ids) + 3  # enrolments, two token creations, the quarantine
    for before, after in itertools.pairwise(lines):
        assert after["prev_hash"] == before["entry_hash"] and after["id"] > before["id"]
    since = lines[-1]["at"]
    tail = client.get("/v1/audit", params={"since": str(since)}, headers=env.auth(env.read)).text.splitlines()
    assert [json.loads(t)["id"] for t in tail] == [e["id"] for e in lines if e["at"] >= since]


def test_console_needs_sign_in_and_its_forms_need_the_csrf_token(
        client: TestClient, env: ApiEnv) -> None:  # type: ignore[type-arg]
    device = env.device_ids[3]
    assert client.get("/console/", follow_redirects=False).headers["location"] == "/console/login"
    bad = client.post("/console/login", data={"token": "ahk_nope"}, follow_redirects=False)
    assert bad.headers["location"].startswith("/console/login?error")
    signed_in = client.post("/console/login", data={"token": env.operate}, follow_redirects=False)
    cookie = signed_in.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = client.get(f"/console/devices/{device}")
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert csrf is not None
    for token in ("", "0" * 64):
        assert_problem(client.post(f"/console/devices/{device}/quarantine", data={"reason": "r", "csrf": token},
                                   follow_redirects=False), 403)
    done = client.post(f"/console/devices/{device}/quarantine", data={"reason": "bench test", "csrf": csrf.group(1)},
                       follow_redirects=False)
    assert done.status_code == 303
    assert "quarantined" in client.get(f"/console/devices/{device}").text
    assert audit_rows(env, "quarantine")[-1]["actor"] == "token:ops"
    # A read-scope session sees no action form and cannot post one.
    client.cookies.clear()
    client.post("/console/login", data={"token": env.read})
    viewer_page = client.get(f"/console/devices/{device}").text
    assert 'name="csrf"' not in viewer_page
    viewer_csrf = re.search(r'name="csrf" value="([0-9a-f]*)"', viewer_page)
    assert viewer_csrf is None
    from hub.server.api.context import csrf_token

    forged = client.post(f"/console/devices/{device}/release", data={"reason": "r", "csrf": csrf_token(env.read)},
                         follow_redirects=False)
    assert_problem(forged, 403)


def test_token_commands_create_list_and_revoke(env: ApiEnv) -> None:
    from click.testing import CliRunner

    from hub.cli.main import cli

    base = ["--state-dir", str(env.settings.state_dir)]
    made = CliRunner().invoke(cli, [*base, "token", "create", "--name", "grafana", "--scope", "read",
                                    "--expires-in", "90d", "--json"])
    assert made.exit_code == 0, made.output
    created = json.loads(made.output)
    assert created["scope"] == "read" and created["expires_at"] - created["created_at"] == 90 * 86400
    principal = check_token(env.store, created["token"])
    assert principal is not None and principal.actor == "token:grafana" and not principal.may("operate")
    listed = CliRunner().invoke(cli, [*base, "token", "list", "--json"])
    rows = json.loads(listed.output)
    assert {r["name"] for r in rows} == {"viewer", "ops", "grafana"}
    assert created["token"].split("_", 2)[2] not in listed.output and "secret_sha256" not in listed.output
    assert CliRunner().invoke(cli, [*base, "token", "revoke", created["token_id"]]).exit_code == 0
    assert check_token(env.store, created["token"]) is None
    again = CliRunner().invoke(cli, [*base, "token", "revoke", created["token_id"]])
    assert again.exit_code == 1 and "no active token" in again.output
    for bad in (["--scope", "admin"], ["--scope", "read", "--expires-in", "soon"]):
        refused = CliRunner().invoke(cli, [*base, "token", "create", "--name", "x", *bad])
        assert refused.exit_code in (1, 2)
    assert CliRunner().invoke(cli, [*base, "token", "create", "--name", "a b", "--scope", "read"]).exit_code == 1


@pytest.mark.parametrize("settings", [{"api_client_cert_scope": "admin"}, {"api_client_ca": "ca.pem"},
                                      {"api_tls_cert": "server.pem"}])
def test_api_settings_are_checked_at_load(settings: dict[str, str]) -> None:
    from hub.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="api_"):
        load_settings(None, environ={}, **settings)


def test_api_reads_do_not_wait_for_the_hubs_writer(client: TestClient, env: ApiEnv) -> None:  # type: ignore[type-arg]
    """SQLite: a reader begins a deferred transaction, so the API answers while a batch holds the write lock
    (before, every read began BEGIN IMMEDIATE and failed with 'database is locked' after the busy timeout)."""
    import threading

    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with env.store.transaction():
            held.set()
            release.wait(30)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert held.wait(5)
        started = time.monotonic()
        response = client.get(f"/v1/devices/{env.device_ids[0]}", headers=env.auth(env.read))
        assert response.status_code == 200, response.text
        assert time.monotonic() - started < 4.0  # well under the 5 s busy timeout it used to wait out
    finally:
        release.set()
        thread.join()


def test_manifests_policies_and_report_are_served(client: TestClient, env: ApiEnv) -> None:  # type: ignore[type-arg]
    import base64

    import cbor2

    manifests = client.get("/v1/manifests", headers=env.auth(env.read)).json()
    assert {m["device_class"] for m in manifests} >= {"env-sensor", "smart-meter"}
    signed = cbor2.loads(base64.b64decode(manifests[0]["signed"]))
    assert isinstance(signed, cbor2.CBORTag) and signed.tag == 18  # COSE_Sign1 (RFC 9052 §4.2)
    meters = client.get("/v1/policies", params={"class": "smart-meter"}, headers=env.auth(env.read)).json()
    assert meters and all(p["device_class"] == "smart-meter" and "version" in p["source"] for p in meters)
    report = client.get("/v1/report", headers=env.auth(env.read)).json()
    assert report["total"] == len(env.device_ids) and report["by_status"] == {"enrolled": len(env.device_ids)}
    schema = client.get("/v1/schema/openapi.json").json()["components"]["schemas"]
    assert {"DeviceDetail", "DevicePage", "ManifestView", "PolicyView", "ActionResult"} <= set(schema)
