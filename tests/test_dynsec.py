"""hub.broker.dynsec without a broker: the roles' ACLs, the commands the enforcer sends (only differences:
each role change disconnects the device), sync, error handling and the correlation of answers.
The real plugin is exercised in tests/test_dynsec_broker.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from hub import wire
from hub.broker.control import Correlator
from hub.broker.dynsec import (
    ROLE_QUARANTINED,
    ROLE_REVOKED,
    ROLE_TRUSTED,
    DynsecEnforcer,
    initial_config,
    role_acls,
)
from hub.broker.enforcement import QUARANTINE_DENIED, EnforcementError

Command = dict[str, Any]


class FakePlugin:
    """The plugin's client and role commands as its documentation describes them, kept in memory."""

    def __init__(self) -> None:
        self.clients: dict[str, list[str]] = {}
        self.roles: dict[str, list[Command]] = {}
        self.sent: list[Command] = []
        self.kicked: list[str] = []  # what Mosquitto 2.0.11 disconnects (measured)
        self.refuse: str | None = None

    def __call__(self, commands: Sequence[Command]) -> list[Command]:
        return [self._one(dict(c)) for c in commands]

    def _one(self, c: Command) -> Command:
        self.sent.append(c)
        name, out = c["command"], {"command": c["command"]}
        if name == self.refuse:
            return {**out, "error": "Internal error"}
        if name == "getRole":
            if c["rolename"] not in self.roles:
                return {**out, "error": "Role not found"}
            return {**out, "data": {"role": {"rolename": c["rolename"], "acls": self.roles[c["rolename"]]}}}
        if name == "createRole":
            self.roles[c["rolename"]] = list(c.get("acls", []))
        elif name == "removeRoleACL":
            self.roles[c["rolename"]] = [a for a in self.roles[c["rolename"]]
                                         if (a["acltype"], a["topic"]) != (c["acltype"], c["topic"])]
        elif name == "addRoleACL":
            self.roles[c["rolename"]].append({k: v for k, v in c.items() if k not in ("command", "rolename")})
        elif name == "getClient":
            if c["username"] not in self.clients:
                return {**out, "error": "Client not found"}
            return {**out, "data": {"client": {"username": c["username"],
                                               "roles": [{"rolename": r} for r in self.clients[c["username"]]]}}}
        elif name == "createClient":
            if c["username"] in self.clients:
                return {**out, "error": "Client already exists"}
            self.clients[c["username"]] = [r["rolename"] for r in c.get("roles", [])]
        elif name == "addClientRole":
            self.clients[c["username"]].append(c["rolename"])
            self.kicked.append(c["username"])
        elif name == "removeClientRole":
            self.clients[c["username"]].remove(c["rolename"])
            self.kicked.append(c["username"])
        elif name == "listClients":
            names = sorted(self.clients)[c["offset"]:c["offset"] + c["count"]]
            return {**out, "data": {"totalCount": len(self.clients), "clients": [
                {"username": n, "roles": [{"rolename": r} for r in self.clients[n]]} for n in names]}}
        return out


def test_roles_only_deny_and_cover_what_a_quarantine_denies() -> None:
    assert role_acls(ROLE_TRUSTED) == []
    for role in (ROLE_QUARANTINED, ROLE_REVOKED):
        assert role_acls(role) and all(a["allow"] is False for a in role_acls(role))
    denied = {(a["acltype"], a["topic"]) for a in role_acls(ROLE_QUARANTINED)}
    for topic in QUARANTINE_DENIED:
        pattern = topic.format(device_id="+")
        assert {("publishClientSend", pattern), ("subscribePattern", pattern),
                ("publishClientReceive", pattern)} <= denied
    topics = {a["topic"] for a in role_acls(ROLE_QUARANTINED)}
    for open_topic in (wire.device_topic("+", wire.EVIDENCE), wire.device_topic("+", wire.COMMAND),
                       wire.EPOCH_TOPIC):
        assert open_topic not in topics, "the path back to health stays open"
    revoked = {(a["acltype"], a["topic"]) for a in role_acls(ROLE_REVOKED)}
    assert ("publishClientSend", "#") in revoked and ("subscribePattern", "hub/#") in revoked
    with pytest.raises(ValueError):
        role_acls("admin")


def test_initial_config_gives_only_hub_identities_the_admin_role() -> None:
    config = initial_config(["hub-w1"])
    assert [c["username"] for c in config["clients"]] == ["hub-w1"]
    assert config["defaultACLAccess"]["publishClientSend"] is False
    roles = {r["rolename"] for r in config["roles"]}
    assert {ROLE_TRUSTED, ROLE_QUARANTINED, ROLE_REVOKED} <= roles


def test_quarantine_release_revoke_send_only_differences() -> None:
    plugin = FakePlugin()
    enforcer = DynsecEnforcer(plugin)
    enforcer.quarantine("dev-1")
    assert plugin.clients == {"dev-1": [ROLE_QUARANTINED]} and plugin.kicked == []
    assert set(plugin.roles) == {ROLE_TRUSTED, ROLE_QUARANTINED, ROLE_REVOKED}
    enforcer.quarantine("dev-1")  # idempotent: nothing changes, nobody is disconnected
    assert plugin.kicked == []
    enforcer.release("dev-1")
    assert plugin.clients["dev-1"] == [ROLE_TRUSTED] and plugin.kicked == ["dev-1", "dev-1"]
    sent = len(plugin.sent)
    enforcer.release("dev-1")
    assert [c["command"] for c in plugin.sent[sent:]] == ["getClient"]
    enforcer.revoke("dev-1")
    assert plugin.clients["dev-1"] == [ROLE_REVOKED]


def test_sync_applies_the_database_and_releases_stale_roles() -> None:
    plugin = FakePlugin()
    enforcer = DynsecEnforcer(plugin, batch=2)
    plugin.clients = {"stale": [ROLE_QUARANTINED], "ok": [ROLE_TRUSTED], "hub-w1": ["attest-hub-admin"],
                      "was-revoked": [ROLE_QUARANTINED]}
    enforcer.sync(["new", "held"], ["was-revoked"])
    assert plugin.clients == {"stale": [ROLE_TRUSTED], "ok": [ROLE_TRUSTED], "hub-w1": ["attest-hub-admin"],
                              "was-revoked": [ROLE_REVOKED], "new": [ROLE_QUARANTINED], "held": [ROLE_QUARANTINED]}
    assert enforcer.status_roles()["held"] == {ROLE_QUARANTINED}
    sent = len(plugin.sent)
    enforcer.sync(["new", "held"], ["was-revoked"])
    assert [c["command"] for c in plugin.sent[sent:]] == ["listClients"], "already in sync: nothing to change"


def test_a_role_edited_by_hand_is_put_back() -> None:
    plugin = FakePlugin()
    DynsecEnforcer(plugin).quarantine("dev-1")
    plugin.roles[ROLE_QUARANTINED] = [{"acltype": "publishClientSend", "topic": "#", "allow": True, "priority": 0}]
    DynsecEnforcer(plugin).quarantine("dev-2")
    assert sorted(a["topic"] for a in plugin.roles[ROLE_QUARANTINED]) == sorted(
        a["topic"] for a in role_acls(ROLE_QUARANTINED))


def test_refusals_and_bad_ids_are_enforcement_errors() -> None:
    plugin = FakePlugin()
    enforcer = DynsecEnforcer(plugin)
    plugin.refuse = "createClient"
    with pytest.raises(EnforcementError, match="createClient: Internal error"):
        enforcer.quarantine("dev-1")
    plugin.refuse = None
    for bad in ("dev/1", "dev+", "#", "", "hub-w1", "$SYS", "a b"):
        with pytest.raises(EnforcementError, match="refusing"):
            enforcer.quarantine(bad)
        with pytest.raises(EnforcementError, match="refusing"):
            enforcer.sync([bad])


def test_correlator_matches_answers_and_ignores_garbage_and_strangers() -> None:
    correlator = Correlator()
    payload, ids, answers = correlator.prepare([{"command": "getClient", "username": "a"},
                                                {"command": "getClient", "username": "b"}])
    sent = json.loads(payload)["commands"]
    assert [c["correlationData"] for c in sent] == ids and sent[0]["username"] == "a"
    for garbage in (b"", b"not json", b"[]", b'{"responses": 5}', b'{"responses": [1, {"correlationData": 7}]}'):
        correlator.on_response(garbage)
    correlator.on_response(json.dumps({"responses": [{"command": "getClient", "correlationData": "someone-else"}]}
                                      ).encode())
    # answers may come back in any order and in several messages
    threading.Timer(0.05, correlator.on_response, [json.dumps({"responses": [
        {"command": "getClient", "correlationData": ids[1], "error": "Client not found"}]}).encode()]).start()
    threading.Timer(0.1, correlator.on_response, [json.dumps({"responses": [
        {"command": "getClient", "correlationData": ids[0], "data": {}}]}).encode()]).start()
    got = correlator.collect(ids, answers, 5)
    assert "error" not in got[0] and got[1]["error"] == "Client not found"
    _, ids, answers = correlator.prepare([{"command": "listClients"}])
    with pytest.raises(EnforcementError, match="answered 0 of 1"):
        correlator.collect(ids, answers, 0.05)
