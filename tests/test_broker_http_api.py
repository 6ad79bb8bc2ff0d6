"""EMQX and HiveMQ enforcement, request by request, against fakes that answer as the brokers' published API
descriptions say (status codes and bodies from EMQX's ``emqx_authz_api_mnesia`` / clients API and HiveMQ's
REST API OpenAPI description 4.30). No real EMQX or HiveMQ runs here: docs/ENFORCEMENT.md says so."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from hub.broker.emqx import RULES_PATH, EmqxEnforcer, rules_for
from hub.broker.enforcement import EnforcementError, enforcer_from_settings
from hub.broker.hivemq import POLICIES_PATH, HivemqEnforcer, policies_for, policy_id
from hub.broker.httpapi import HttpApi, read_credentials
from hub.config import load_settings

Exchange = tuple[str, str, Any]  # (method, path with query, JSON body or None)


class FakeBroker:
    """A recorded HTTP exchange log plus the state the answers are computed from."""

    def __init__(self) -> None:
        self.log: list[Exchange] = []
        self.auth: list[str | None] = []
        self.emqx_rules: dict[str, list[dict[str, Any]]] = {}
        self.emqx_connected: set[str] = set()
        self.hivemq: dict[str, dict[str, Any]] = {}
        self.fail_with: int | None = None
        self.page_size = 1000

    def answer(self, method: str, target: str, body: Any) -> tuple[int, Any]:
        if self.fail_with:
            return self.fail_with, {"code": "INTERNAL_ERROR", "message": "boom"}
        split = urlsplit(target)
        path, query = unquote(split.path), parse_qs(split.query)
        if path.startswith(RULES_PATH):
            return self._emqx_rules(method, path[len(RULES_PATH):].lstrip("/"), query, body)
        if path.startswith("/api/v5/clients/"):
            clientid = path.rsplit("/", 1)[1]
            if clientid in self.emqx_connected:
                self.emqx_connected.discard(clientid)
                return 204, None
            return 404, {"code": "CLIENTID_NOT_FOUND", "message": "Client ID not found"}
        if path.startswith(POLICIES_PATH):
            return self._hivemq(method, path[len(POLICIES_PATH):].lstrip("/"), query, body)
        return 404, None

    def _emqx_rules(self, method: str, user: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if not user and method == "GET":
            page, limit = int(query["page"][0]), int(query["limit"][0])
            names = sorted(self.emqx_rules)[(page - 1) * limit: page * limit]
            return 200, {"data": [{"username": n, "rules": self.emqx_rules[n]} for n in names],
                         "meta": {"page": page, "limit": limit, "count": len(self.emqx_rules),
                                  "hasnext": page * limit < len(self.emqx_rules)}}
        if method == "GET":
            if user not in self.emqx_rules:
                return 404, {"code": "NOT_FOUND", "message": "Not Found"}
            return 200, {"username": user, "rules": self.emqx_rules[user]}
        if method == "PUT":
            self.emqx_rules[user] = body["rules"]
            return 204, None
        if method == "DELETE":
            return (204, None) if self.emqx_rules.pop(user, None) is not None else (404, {"code": "NOT_FOUND"})
        return 405, None

    def _hivemq(self, method: str, pid: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if not pid and method == "GET":
            ids = sorted(self.hivemq)
            start = int(query.get("cursor", ["0"])[0])
            limit = min(int(query["limit"][0]), self.page_size)
            items = [{"id": i, "matching": self.hivemq[i]["matching"]} for i in ids[start:start + limit]]
            links = {"next": f"{POLICIES_PATH}?cursor={start + limit}"} if start + limit < len(ids) else {}
            return 200, {"items": items, "_links": links}
        if method == "POST":
            if body["id"] in self.hivemq:
                return 400, {"errors": [{"title": "Policy id already used",
                                         "detail": f"The given policy id '{body['id']}' is already in use."}]}
            self.hivemq[body["id"]] = body
            return 201, body
        if method == "GET":
            return (200, self.hivemq[pid]) if pid in self.hivemq else (404, {"errors": [{"title": "not found"}]})
        if method == "DELETE":
            return (204, None) if self.hivemq.pop(pid, None) is not None else (404, {"errors": []})
        return 405, None

    def since(self, mark: int) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _ in self.log[mark:]]


@pytest.fixture
def fake() -> Iterator[tuple[FakeBroker, str]]:
    state = FakeBroker()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            state.log.append((self.command, self.path, body))
            state.auth.append(self.headers.get("Authorization"))
            status, answer = state.answer(self.command, self.path, body)
            raw = json.dumps(answer).encode() if answer is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_PUT = do_POST = do_DELETE = _serve

        def log_message(self, *_args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _emqx(url: str) -> EmqxEnforcer:
    return EmqxEnforcer(HttpApi(url, ("key", "secret")))


def test_emqx_quarantine_puts_deny_rules_for_that_username_and_kicks_the_client(fake: Any) -> None:
    broker, url = fake
    broker.emqx_connected.add("dev-1")
    enforcer = _emqx(url)
    enforcer.quarantine("dev-1")
    path = f"{RULES_PATH}/dev-1"
    assert broker.since(0) == [("GET", path), ("PUT", path), ("DELETE", "/api/v5/clients/dev-1")]
    assert broker.log[1][2] == {"username": "dev-1", "rules": [
        {"topic": "fleet/dev-1/data", "permission": "deny", "action": "all"},
        {"topic": "hub/manifests/#", "permission": "deny", "action": "all"}]}
    assert set(broker.auth) == {"Basic " + base64.b64encode(b"key:secret").decode()}
    assert "dev-1" not in broker.emqx_connected
    mark = len(broker.log)
    enforcer.quarantine("dev-1")  # idempotent: looked up, nothing changed, nobody kicked
    assert broker.since(mark) == [("GET", path)]
    mark = len(broker.log)
    enforcer.release("dev-1")
    assert broker.since(mark) == [("GET", path), ("DELETE", path), ("DELETE", "/api/v5/clients/dev-1")]
    mark = len(broker.log)
    enforcer.release("dev-1")
    assert broker.since(mark) == [("GET", path)]
    enforcer.revoke("dev-1")
    assert broker.emqx_rules["dev-1"] == rules_for("dev-1", "revoked")


def test_emqx_leaves_rules_written_by_an_operator_alone_on_release_and_sync(fake: Any) -> None:
    broker, url = fake
    theirs = [{"topic": "lab/#", "permission": "allow", "action": "all"}]
    broker.emqx_rules["dev-op"] = theirs
    enforcer = _emqx(url)
    enforcer.release("dev-op")
    enforcer.sync([])
    assert broker.emqx_rules == {"dev-op": theirs}


def test_emqx_sync_pages_through_users_and_sends_only_differences(fake: Any) -> None:
    broker, url = fake
    broker.emqx_rules = {f"dev-{i:04d}": rules_for(f"dev-{i:04d}", "quarantined") for i in range(1500)}
    broker.emqx_rules["dev-0007"] = rules_for("dev-0007", "revoked")
    enforcer = _emqx(url)
    wanted = [f"dev-{i:04d}" for i in range(1, 1500)] + ["dev-new"]
    enforcer.sync(wanted)  # the broker says dev-0007 is revoked, the database says quarantined
    requests = broker.since(0)
    assert requests[:2] == [("GET", f"{RULES_PATH}?page=1&limit=1000"), ("GET", f"{RULES_PATH}?page=2&limit=1000")]
    assert requests[2:] == [("PUT", f"{RULES_PATH}/dev-0007"), ("DELETE", "/api/v5/clients/dev-0007"),
                            ("PUT", f"{RULES_PATH}/dev-new"), ("DELETE", "/api/v5/clients/dev-new"),
                            ("DELETE", f"{RULES_PATH}/dev-0000"), ("DELETE", "/api/v5/clients/dev-0000")]
    assert broker.emqx_rules["dev-0007"] == rules_for("dev-0007", "quarantined")
    assert "dev-0000" not in broker.emqx_rules and len(broker.emqx_rules) == 1500


def test_emqx_errors_and_device_ids_in_paths(fake: Any) -> None:
    broker, url = fake
    enforcer = _emqx(url)
    enforcer.quarantine("capteur.A_1-x")
    assert broker.log[0][1] == f"{RULES_PATH}/capteur.A_1-x"  # the whole id alphabet is one path segment as is
    broker.fail_with = 500
    with pytest.raises(EnforcementError, match="HTTP 500"):
        enforcer.quarantine("dev-2")
    for bad in ("dev/1", "#", "hub-w1", "", "capteur-é?x", "dev%2F1"):  # outside the id alphabet: no request
        with pytest.raises(EnforcementError, match="refusing"):
            enforcer.quarantine(bad)
    with pytest.raises(EnforcementError, match="broker API"):
        EmqxEnforcer(HttpApi("http://127.0.0.1:9", timeout=2)).quarantine("dev-1")
    with pytest.raises(EnforcementError, match="not an http"):
        HttpApi("file:///etc/passwd")


def test_hivemq_quarantine_and_revoke_create_drop_policies_release_deletes_them(fake: Any) -> None:
    broker, url = fake
    enforcer = HivemqEnforcer(HttpApi(url))
    enforcer.quarantine("dev-1")
    data, evidence = policy_id("dev-1", "data"), policy_id("dev-1", "evidence")
    assert broker.since(0) == [("GET", f"{POLICIES_PATH}/{data}"), ("GET", f"{POLICIES_PATH}/{evidence}"),
                               ("POST", POLICIES_PATH)]
    assert broker.log[2][2] == {"id": data, "matching": {"topicFilter": "fleet/dev-1/data"}, "onSuccess": {
        "pipeline": [{"id": "drop", "functionId": "Mqtt.drop",
                      "arguments": {"reasonString": "quarantined by the attestation hub"}}]}}
    assert "validation" not in broker.log[2][2], "no validation section: every publish on the topic is dropped"
    mark = len(broker.log)
    enforcer.quarantine("dev-1")
    assert [m for m, _ in broker.since(mark)] == ["GET", "GET"]
    enforcer.revoke("dev-1")
    assert {p["matching"]["topicFilter"] for p in broker.hivemq.values()} == {"fleet/dev-1/data",
                                                                               "fleet/dev-1/evidence"}
    mark = len(broker.log)
    enforcer.release("dev-1")
    assert broker.since(mark)[2:] == [("DELETE", f"{POLICIES_PATH}/{data}"),
                                      ("DELETE", f"{POLICIES_PATH}/{evidence}")]
    assert broker.hivemq == {}


def test_hivemq_sync_follows_the_cursor_and_keeps_other_policies(fake: Any) -> None:
    broker, url = fake
    broker.page_size = 10
    theirs = {"id": "schema-check", "matching": {"topicFilter": "lab/#"}}
    broker.hivemq["schema-check"] = theirs
    for i in range(25):
        for p in policies_for(f"dev-{i:02d}", "quarantined"):
            broker.hivemq[p["id"]] = p
    enforcer = HivemqEnforcer(HttpApi(url))
    enforcer.sync([f"dev-{i:02d}" for i in range(1, 25)], ["dev-05"])
    gets = [p for m, p in broker.since(0) if m == "GET"]
    assert gets == [f"{POLICIES_PATH}?fields=id%2Cmatching&limit=500",
                    f"{POLICIES_PATH}?fields=id%2Cmatching&limit=500&cursor=10",
                    f"{POLICIES_PATH}?fields=id%2Cmatching&limit=500&cursor=20"]
    writes = [(m, p) for m, p in broker.since(0) if m != "GET"]
    assert writes == [("POST", POLICIES_PATH), ("DELETE", f"{POLICIES_PATH}/{policy_id('dev-00', 'data')}")]
    assert broker.hivemq["schema-check"] == theirs
    assert policy_id("dev-05", "evidence") in broker.hivemq and policy_id("dev-00", "data") not in broker.hivemq


def test_hivemq_a_policy_created_meanwhile_by_another_worker_is_fine_other_refusals_are_not(fake: Any) -> None:
    broker, url = fake
    enforcer = HivemqEnforcer(HttpApi(url))
    pid = policy_id("dev-1", "data")
    original = broker.answer

    def racing(method: str, target: str, body: Any) -> tuple[int, Any]:
        if method == "POST" and pid not in broker.hivemq:
            broker.hivemq[pid] = body  # another worker's POST lands between our GET and our POST
        return original(method, target, body)

    broker.answer = racing  # type: ignore[method-assign]
    enforcer.quarantine("dev-1")
    assert pid in broker.hivemq
    broker.answer = lambda m, t, b: (  # type: ignore[method-assign]
        (400, {"errors": [{"title": "Policy invalid"}]}) if m == "POST" else original(m, t, b))
    with pytest.raises(EnforcementError, match="refused"):
        enforcer.quarantine("dev-2")


def test_credentials_file_must_be_owner_only_and_well_formed(tmp_path: Path) -> None:
    path = tmp_path / "api.key"
    path.write_text("key:secret\n")
    path.chmod(0o644)
    with pytest.raises(EnforcementError, match="readable by others"):
        read_credentials(path)
    path.chmod(0o600)
    assert read_credentials(path) == ("key", "secret")
    for text in ("nocolon", ":secret", "key:", "a:b\nc:d"):
        path.write_text(text)
        with pytest.raises(EnforcementError, match="name:secret"):
            read_credentials(path)
    with pytest.raises(EnforcementError, match="cannot read"):
        read_credentials(tmp_path / "missing")


def test_settings_choose_the_http_backends(tmp_path: Path) -> None:
    key = tmp_path / "api.key"
    key.write_text("k:s")
    key.chmod(0o600)
    for mode, cls in (("emqx", EmqxEnforcer), ("hivemq", HivemqEnforcer)):
        settings = load_settings(None, environ={}, broker_enforcement=mode, broker_api_url="https://broker:18083",
                                 broker_api_key_file=str(key))
        assert isinstance(enforcer_from_settings(settings), cls)
