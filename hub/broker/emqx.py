"""Quarantine through EMQX 5's HTTP API: per-username rules in the built-in-database authorizer, then a kick.

Written from EMQX's public API description (the ``/api/v5/authorization/sources/built_in_database/rules``
endpoints and ``DELETE /api/v5/clients/{clientid}``), checked request by request against a recorded
fake in the tests, **not run against a real EMQX** (docs/ENFORCEMENT.md says what that leaves open).

What the broker needs (docs/ENFORCEMENT.md): the ``built_in_database`` authorization source placed before
the one that grants devices their own topics, the device id as both username and client id (the
certificate CN: ``peer_cert_as_username`` / ``peer_cert_as_clientid = cn``), and an API key whose
``key:secret`` is in ``broker_api_key_file``.

One rule set per state, for that username only, holding only denials:

    quarantined  deny ``all`` on each QUARANTINE_DENIED topic (the device's data, manifests)
    revoked      deny ``publish`` on ``#``, ``all`` on ``hub/#``
    trusted      no rules (the user's entry is deleted)

EMQX caches authorization results per client, so every change is followed by a kick: the client
reconnects under the new rules (the same DISCONNECT-and-reconnect as Mosquitto's plugin).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from hub import wire
from hub.broker.enforcement import QUARANTINE_DENIED, validated
from hub.broker.httpapi import HttpApi, quote

__all__ = ["RULES_PATH", "EmqxEnforcer", "rules_for"]

log = logging.getLogger(__name__)

RULES_PATH = "/api/v5/authorization/sources/built_in_database/rules/users"
CLIENTS_PATH = "/api/v5/clients"
QUARANTINED, REVOKED = "quarantined", "revoked"
_PAGE = 1000


def rules_for(device_id: str, state: str) -> list[dict[str, Any]]:
    """The rule list the hub keeps for ``device_id`` in ``state`` (``quarantined`` or ``revoked``)."""
    if state == QUARANTINED:
        return [{"topic": t.format(device_id=device_id), "permission": "deny", "action": "all"}
                for t in QUARANTINE_DENIED]
    if state == REVOKED:
        return [{"topic": "#", "permission": "deny", "action": "publish"},
                {"topic": wire.HUB_ROOT + "/#", "permission": "deny", "action": "all"}]
    raise ValueError(f"no rules for state {state!r}")


def _same(rules: object, wanted: list[dict[str, Any]]) -> bool:
    if not isinstance(rules, list):
        return False
    keys = ("topic", "permission", "action")
    return sorted(tuple(str(r.get(k)) for k in keys) for r in rules if isinstance(r, dict)) == \
        sorted(tuple(str(r[k]) for k in keys) for r in wanted)


class EmqxEnforcer:
    """``BrokerEnforcer`` on EMQX 5's HTTP API (module docstring)."""

    name = "emqx"

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def quarantine(self, device_id: str) -> None:
        self._set(validated(device_id), QUARANTINED)

    def revoke(self, device_id: str) -> None:
        self._set(validated(device_id), REVOKED)

    def release(self, device_id: str) -> None:
        validated(device_id)
        if self._current(device_id) not in (QUARANTINED, REVOKED):
            return  # nothing of ours (rules an operator wrote for this user are theirs)
        self._api.request("DELETE", f"{RULES_PATH}/{quote(device_id)}", ok=(204, 404))
        self._kick(device_id)

    def sync(self, quarantined: Collection[str], revoked: Collection[str] = ()) -> None:
        wanted = {validated(d): QUARANTINED for d in quarantined}
        wanted.update({validated(d): REVOKED for d in revoked})
        current = self.managed()
        for device_id, state in sorted(wanted.items()):
            if current.get(device_id) != state:
                self._put(device_id, state)
        for device_id in sorted(set(current) - set(wanted)):
            self._api.request("DELETE", f"{RULES_PATH}/{quote(device_id)}", ok=(204, 404))
            self._kick(device_id)

    def managed(self) -> dict[str, str]:
        """Usernames whose rules are exactly one of the hub's rule sets: username -> state. Rules an
        operator wrote for other users, or edited, are left alone."""
        out: dict[str, str] = {}
        page = 1
        while True:
            answer = self._api.request("GET", RULES_PATH, query={"page": str(page), "limit": str(_PAGE)}).body
            entries = answer.get("data", []) if isinstance(answer, dict) else []
            for entry in entries:
                username = entry.get("username") if isinstance(entry, dict) else None
                if not isinstance(username, str):
                    continue
                for state in (QUARANTINED, REVOKED):
                    if _same(entry.get("rules"), rules_for(username, state)):
                        out[username] = state
            meta = answer.get("meta", {}) if isinstance(answer, dict) else {}
            if not entries or not meta.get("hasnext"):
                return out
            page += 1

    def _current(self, device_id: str) -> str | None:
        answer = self._api.request("GET", f"{RULES_PATH}/{quote(device_id)}", ok=(200, 404))
        if answer.status == 404 or not isinstance(answer.body, dict):
            return None
        for state in (QUARANTINED, REVOKED):
            if _same(answer.body.get("rules"), rules_for(device_id, state)):
                return state
        return "other"

    def _set(self, device_id: str, state: str) -> None:
        current = self._current(device_id)
        if current == "other":
            log.warning("EMQX rules written by someone else are replaced", extra={"device_id": device_id})
        if current != state:
            self._put(device_id, state)

    def _put(self, device_id: str, state: str) -> None:
        # PUT creates or replaces the user's rule set (204)
        self._api.request("PUT", f"{RULES_PATH}/{quote(device_id)}",
                          {"username": device_id, "rules": rules_for(device_id, state)}, ok=(200, 204))
        self._kick(device_id)
        log.info("EMQX rules: %s", state, extra={"device_id": device_id})

    def _kick(self, device_id: str) -> None:
        """Disconnect the client so its next session is authorized afresh (404: not connected)."""
        self._api.request("DELETE", f"{CLIENTS_PATH}/{quote(device_id)}", ok=(204, 404))
