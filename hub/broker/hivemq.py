"""Quarantine through HiveMQ's REST API: Data Hub data policies that drop the device's publishes.

Written from HiveMQ's published OpenAPI description of its REST API (4.30:
``/api/v1/data-hub/data-validation/policies``, Data Hub 4.15 and later) and the Data Hub's
``Mqtt.drop`` function, checked request by request against a recorded fake in the tests, **not run
against a real HiveMQ** (docs/ENFORCEMENT.md says what that leaves open).

A data policy matches one topic filter and runs its ``onSuccess`` pipeline for every publish on it;
with no validation section the outcome is always success. So the hub keeps one policy per cut-off
topic, whose pipeline is a single ``Mqtt.drop``:

    quarantined  ``fleet/{id}/data``
    revoked      ``fleet/{id}/data`` and ``fleet/{id}/evidence``
    trusted      no policy

Policy ids are ``attest-<kind>-<first 40 hex of SHA-256(device id)>`` (a device id may hold characters
a policy id may not); the device id is read back from the policy's topic filter. Data policies act on
publishes only: unlike the Mosquitto and EMQX backends, a quarantined device may still subscribe to
the manifests (signed, public reference values). Policies act on the next publish of an open session,
so no disconnect is needed.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection
from typing import Any

from hub import wire
from hub.broker.enforcement import EnforcementError, validated
from hub.broker.httpapi import HttpApi, quote

__all__ = ["POLICIES_PATH", "HivemqEnforcer", "policies_for", "policy_id"]

log = logging.getLogger(__name__)

POLICIES_PATH = "/api/v1/data-hub/data-validation/policies"
PREFIX = "attest-"
_LEAVES = {"quarantined": (wire.DATA,), "revoked": (wire.DATA, wire.EVIDENCE)}


def policy_id(device_id: str, leaf: str) -> str:
    digest = hashlib.sha256(device_id.encode("utf-8")).hexdigest()[:40]
    return f"{PREFIX}{leaf}-{digest}"


def policies_for(device_id: str, state: str) -> list[dict[str, Any]]:
    """The data policies that cut ``device_id`` off in ``state`` (``quarantined`` or ``revoked``)."""
    if state not in _LEAVES:
        raise ValueError(f"no policies for state {state!r}")
    return [{
        "id": policy_id(device_id, leaf),
        "matching": {"topicFilter": wire.device_topic(device_id, leaf)},
        "onSuccess": {"pipeline": [{"id": "drop", "functionId": "Mqtt.drop",
                                    "arguments": {"reasonString": f"{state} by the attestation hub"}}]},
    } for leaf in _LEAVES[state]]


class HivemqEnforcer:
    """``BrokerEnforcer`` on HiveMQ's REST API (module docstring)."""

    name = "hivemq"

    def __init__(self, api: HttpApi) -> None:
        self._api = api

    def quarantine(self, device_id: str) -> None:
        self._apply({validated(device_id): "quarantined"}, only=(device_id,))

    def revoke(self, device_id: str) -> None:
        self._apply({validated(device_id): "revoked"}, only=(device_id,))

    def release(self, device_id: str) -> None:
        self._apply({}, only=(validated(device_id),))

    def sync(self, quarantined: Collection[str], revoked: Collection[str] = ()) -> None:
        wanted = {validated(d): "quarantined" for d in quarantined}
        wanted.update({validated(d): "revoked" for d in revoked})
        self._apply(wanted, only=None)

    def managed(self) -> dict[str, str]:
        """The hub's policies now in the broker: policy id -> the topic filter it drops."""
        out: dict[str, str] = {}
        query = {"fields": "id,matching", "limit": "500"}
        while True:
            answer = self._api.request("GET", POLICIES_PATH, query=query).body
            items = answer.get("items", []) if isinstance(answer, dict) else []
            for item in items:
                pid = item.get("id") if isinstance(item, dict) else None
                topic = (item.get("matching") or {}).get("topicFilter") if isinstance(item, dict) else None
                if isinstance(pid, str) and pid.startswith(PREFIX) and isinstance(topic, str):
                    out[pid] = topic
            cursor = _next_cursor(answer)
            if not items or cursor is None:
                return out
            query = {"fields": "id,matching", "limit": "500", "cursor": cursor}

    def _apply(self, wanted: dict[str, str], only: Collection[str] | None) -> None:
        """Create the policies ``wanted`` calls for and delete the hub's others (of ``only``'s devices)."""
        should = {p["id"]: p for device_id, state in wanted.items() for p in policies_for(device_id, state)}
        if only is None:
            have = self.managed()
        else:  # one device: its possible policies, looked up one by one
            ids = {policy_id(d, leaf) for d in only for leaf in (wire.DATA, wire.EVIDENCE)}
            have = {pid: "" for pid in sorted(ids) if self._exists(pid)}
        for pid, policy in sorted(should.items()):
            if pid not in have:
                answer = self._api.request("POST", POLICIES_PATH, policy, ok=(200, 201, 400))
                if answer.status == 400 and not _already_used(answer.body):  # another worker was first: fine
                    raise EnforcementError(f"HiveMQ refused data policy {pid}: {answer.body}")
        for pid in sorted(set(have) - set(should)):
            self._api.request("DELETE", f"{POLICIES_PATH}/{quote(pid)}", ok=(204, 404))
        if set(should) != set(have):
            log.info("HiveMQ data policies now %d for %d device(s)", len(should), len(wanted))

    def _exists(self, pid: str) -> bool:
        return self._api.request("GET", f"{POLICIES_PATH}/{quote(pid)}", ok=(200, 404)).status == 200


def _already_used(body: object) -> bool:
    errors = body.get("errors", []) if isinstance(body, dict) else []
    return any(isinstance(e, dict) and "already" in str(e.get("title", "")).lower() for e in errors)


def _next_cursor(answer: object) -> str | None:
    """The ``cursor`` query value of ``_links.next`` (a path with ``?cursor=...``), if any."""
    if not isinstance(answer, dict):
        return None
    nxt = (answer.get("_links") or {}).get("next")
    if not isinstance(nxt, str) or "cursor=" not in nxt:
        return None
    from urllib.parse import parse_qs, urlsplit

    values = parse_qs(urlsplit(nxt).query).get("cursor")
    return values[0] if values else None
