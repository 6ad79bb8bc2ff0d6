"""Quarantine through Mosquitto's dynamic-security plugin, driven over MQTT from any host.

The plugin (``mosquitto_dynamic_security.so``, Mosquitto 2.0) takes JSON commands on
``$CONTROL/dynamic-security/v1`` and answers on ``$CONTROL/dynamic-security/v1/response``
(every answer carries the ``correlationData`` of its command). So the hub needs no file
and no signal on the broker's host: a hub identity holding the plugin's admin role is enough.

Rights are split between two layers, both measured on 2.0.11 (docs/ENFORCEMENT.md):

- ``acl_file`` grants every device its own topics with ``%u`` patterns (the 2.0.11 plugin ignores
  ``%u``/``%c`` in role ACLs, so per-device grants cannot live in a shared role);
- the plugin is asked first; when none of a client's role ACLs matches it defers to the
  ``acl_file``. The hub's three roles therefore hold only *denials*, with wildcards that cannot
  widen anyone's rights:

  ``attest-trusted``      no ACLs: the ``acl_file`` grants apply
  ``attest-quarantined``  deny what ``QUARANTINE_DENIED`` lists (data, manifests); evidence,
                          commands, results and the epoch stay open (the path back to health)
  ``attest-revoked``      deny every publish and everything under ``hub/``; its commands and
                          results stay readable

A device the plugin does not know behaves as trusted. Measured on 2.0.11: creating the client with
its role (a device's first quarantine) applies to its open session at once; every later role change
(``addClientRole``/``removeClientRole``) makes the broker disconnect it (reason 0x98, Administrative
action), and it gets the new rights when it reconnects (PROTOCOL.md says what a device does then).

Exceptions::

    EnforcementError   no answer in time, the broker refused a command, or the channel failed
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import Any

from hub import wire
from hub.broker.control import CONTROL_TOPIC, RESPONSE_TOPIC, Command, ConnectionExecutor, Executor, TransportExecutor
from hub.broker.enforcement import QUARANTINE_DENIED, EnforcementError, validated

__all__ = [
    "CONTROL_TOPIC",
    "RESPONSE_TOPIC",
    "ROLE_QUARANTINED",
    "ROLE_REVOKED",
    "ROLE_TRUSTED",
    "ConnectionExecutor",
    "DynsecEnforcer",
    "TransportExecutor",
    "admin_role",
    "initial_config",
    "role_acls",
]

log = logging.getLogger(__name__)

ROLE_TRUSTED = "attest-trusted"
ROLE_QUARANTINED = "attest-quarantined"
ROLE_REVOKED = "attest-revoked"
STATUS_ROLES = (ROLE_TRUSTED, ROLE_QUARANTINED, ROLE_REVOKED)
ADMIN_ROLE = "attest-hub-admin"
DENY_PRIORITY = 100
_ALL_DIRECTIONS = ("publishClientSend", "publishClientReceive", "subscribePattern")



def _deny(acltype: str, topic: str) -> Command:
    return {"acltype": acltype, "topic": topic, "priority": DENY_PRIORITY, "allow": False}


def role_acls(role: str) -> list[Command]:
    """The ACL list of one of the hub's status roles (only denials; see the module docstring)."""
    if role == ROLE_TRUSTED:
        return []
    if role == ROLE_QUARANTINED:
        topics = [t.format(device_id="+") for t in QUARANTINE_DENIED]
        return [_deny(kind, topic) for topic in topics for kind in _ALL_DIRECTIONS]
    if role == ROLE_REVOKED:
        return [_deny("publishClientSend", "#"), _deny("publishClientReceive", wire.HUB_ROOT + "/#"),
                _deny("subscribePattern", wire.HUB_ROOT + "/#")]
    raise ValueError(f"not a status role: {role!r}")


def admin_role() -> Command:
    """The role a hub identity needs to drive the plugin (publish commands, read the answers)."""
    return {"rolename": ADMIN_ROLE, "acls": [
        {"acltype": "publishClientSend", "topic": CONTROL_TOPIC, "allow": True},
        {"acltype": "publishClientReceive", "topic": RESPONSE_TOPIC, "allow": True},
        {"acltype": "subscribeLiteral", "topic": RESPONSE_TOPIC, "allow": True},
    ]}


def initial_config(hub_identities: Collection[str]) -> dict[str, Any]:
    """A plugin configuration file (``plugin_opt_config_file``) where ``hub_identities`` (certificate
    CNs) may drive the plugin and the three status roles exist. Default access denies publishing and
    subscribing so that, with no matching role ACL, the decision falls to the ``acl_file``."""
    roles = [admin_role()] + [{"rolename": r, "acls": role_acls(r)} for r in STATUS_ROLES]
    clients = [{"username": name, "roles": [{"rolename": ADMIN_ROLE}]} for name in hub_identities]
    return {"defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True, "subscribe": False,
                                 "unsubscribe": True},
            "clients": clients, "groups": [], "roles": roles}


def _error(response: Command) -> str | None:
    error = response.get("error")
    return str(error) if error else None


class DynsecEnforcer:
    """``BrokerEnforcer`` on the dynamic-security plugin: one status role per device (module docstring).

    Only differences are sent, because every role change disconnects the device: ``release`` of a
    device that holds only ``attest-trusted`` sends nothing.
    """

    name = "dynsec"

    def __init__(self, execute: Executor, batch: int = 200) -> None:
        self._execute = execute
        self._batch = batch
        self._roles_ready = False

    def quarantine(self, device_id: str) -> None:
        self._set(device_id, ROLE_QUARANTINED)

    def release(self, device_id: str) -> None:
        self._set(device_id, ROLE_TRUSTED)

    def revoke(self, device_id: str) -> None:
        self._set(device_id, ROLE_REVOKED)

    def sync(self, quarantined: Collection[str], revoked: Collection[str] = ()) -> None:
        wanted = {validated(d): ROLE_QUARANTINED for d in quarantined}
        wanted.update({validated(d): ROLE_REVOKED for d in revoked})
        self._ensure_roles()
        current = self.status_roles()
        for username, roles in current.items():
            if username not in wanted and roles & {ROLE_QUARANTINED, ROLE_REVOKED}:
                wanted[username] = ROLE_TRUSTED
        commands = [c for device_id, role in sorted(wanted.items())
                    for c in _changes(device_id, role, current.get(device_id))]
        for start in range(0, len(commands), self._batch):
            self._run(commands[start:start + self._batch])
        if commands:
            log.info("dynamic-security roles synced: %d command(s)", len(commands))

    def status_roles(self) -> dict[str, set[str]]:
        """Every client the plugin knows that holds one of the status roles: username -> those roles."""
        out: dict[str, set[str]] = {}
        offset, page = 0, 1000
        while True:
            data = self._run([{"command": "listClients", "verbose": True, "count": page, "offset": offset}])[0]
            clients = data.get("data", {}).get("clients", [])
            for client in clients:
                roles = {r.get("rolename") for r in client.get("roles", [])} & set(STATUS_ROLES)
                if roles:
                    out[str(client.get("username"))] = {str(r) for r in roles}
            total = int(data.get("data", {}).get("totalCount", 0))
            offset += page
            if not clients or offset >= total:
                return out

    def _set(self, device_id: str, role: str) -> None:
        validated(device_id)
        self._ensure_roles()
        answer = self._execute([{"command": "getClient", "username": device_id}])[0]
        if _error(answer):
            current = None
        else:
            current = {str(r.get("rolename")) for r in answer.get("data", {}).get("client", {}).get("roles", [])}
        commands = _changes(device_id, role, current)
        if commands:
            self._run(commands)
            log.info("dynamic-security role %s", role, extra={"device_id": device_id})

    def _ensure_roles(self) -> None:
        if self._roles_ready:
            return
        answers = self._execute([{"command": "getRole", "rolename": r} for r in STATUS_ROLES])
        commands: list[Command] = []
        for role, answer in zip(STATUS_ROLES, answers, strict=True):
            wanted = role_acls(role)
            if _error(answer):
                commands.append({"command": "createRole", "rolename": role, "acls": wanted})
                continue
            have = answer.get("data", {}).get("role", {}).get("acls", [])
            if _acl_keys(have) != _acl_keys(wanted):  # edited by hand: put the hub's rules back
                log.warning("dynamic-security role %s differs from the hub's; resetting its ACLs", role)
                commands += [{"command": "removeRoleACL", "rolename": role, "acltype": a["acltype"],
                              "topic": a["topic"]} for a in have]
                commands += [{"command": "addRoleACL", "rolename": role, **a} for a in wanted]
        if commands:
            self._run(commands)
        self._roles_ready = True

    def _run(self, commands: Sequence[Command]) -> list[Command]:
        answers = self._execute(commands)
        failed = [f"{c['command']}: {_error(a)}" for c, a in zip(commands, answers, strict=True) if _error(a)]
        if failed:
            self._roles_ready = False  # someone may have deleted a role: check again next time
            raise EnforcementError("the broker refused dynamic-security commands: " + "; ".join(failed[:5]))
        return answers


def _acl_keys(acls: Sequence[Command]) -> set[tuple[str, str, bool, int]]:
    return {(str(a.get("acltype")), str(a.get("topic")), bool(a.get("allow")), int(a.get("priority", 0)))
            for a in acls}


def _changes(device_id: str, role: str, current: set[str] | None) -> list[Command]:
    """Commands that leave ``device_id`` with ``role`` as its only status role (none if it has it)."""
    if current is None:
        return [{"command": "createClient", "username": device_id, "roles": [{"rolename": role}]}]
    commands: list[Command] = []
    if role not in current:
        commands.append({"command": "addClientRole", "username": device_id, "rolename": role})
    commands += [{"command": "removeClientRole", "username": device_id, "rolename": other}
                 for other in STATUS_ROLES if other != role and other in current]
    return commands
