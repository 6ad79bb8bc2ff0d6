"""Liveness: every device owes fresh platform evidence by a deadline kept in the database.

Deadlines are counted in epochs, not wall-clock seconds: the epoch advances on
the leader's monotonic timer, so a hub clock moved by minutes neither expires
nor extends a deadline, and a hub that is down does not advance epochs (its
outage cannot make the fleet "miss" attestations). A device's deadline is set
when its platform evidence is affirmed or warned on; the leader sweeps after
each epoch advance and applies the class policy's ``missed`` rule.
"""

from __future__ import annotations

import math
import time

from hub import wire
from hub.appraisal import transitions
from hub.appraisal.messages import Command
from hub.audit import AuditDraft, append
from hub.crypto.hubkeys import HubKeys
from hub.envelope import Outgoing
from hub.reference.policy import Policy
from hub.reference.values import References
from hub.store import Store
from hub.store.db import DEVICES

EXEMPT = (transitions.QUARANTINED, transitions.REVOKED, transitions.MISSED)


def deadline_epoch(current_epoch: int, policy: Policy, epoch_period_s: float) -> int:
    """The last epoch in which evidence may still arrive: one interval of epochs plus one epoch of grace."""
    return current_epoch + max(1, math.ceil(policy.attestation_interval_s / epoch_period_s)) + 1


def sweep_missed(store: Store, keys: HubKeys, references: References, epoch: int, ttl_s: int,
                 now: float | None = None) -> list[Outgoing]:
    """Mark devices whose deadline has passed; quarantine those whose policy says so."""
    when = time.time() if now is None else now
    messages: list[Outgoing] = []
    with store.transaction() as conn:
        due = conn.execute(
            DEVICES.select()
            .with_only_columns(DEVICES.c.device_id)
            .where(DEVICES.c.next_deadline.is_not(None), DEVICES.c.next_deadline < epoch,
                   DEVICES.c.status.not_in(EXEMPT), DEVICES.c.revoked.is_(False))
            .order_by(DEVICES.c.device_id)
            .limit(10_000)
        ).scalars().all()
        devices = store.devices(conn, due, lock=True)
        audit = []
        commands = []
        for device in devices.values():
            policy = references.policy(device.device_class)
            old = device.status
            device.next_deadline = None
            if policy.missed == "quarantine":
                device.status = transitions.QUARANTINED
                device.command_seq += 1
                command = Command(device.device_id, wire.COMMAND_QUARANTINE, device.command_seq, int(when),
                                  int(when) + ttl_s, f"missed attestation deadline (epoch {epoch})")
                signed = command.sign(keys.signing_key, keys.kid)
                commands.append({"device_id": device.device_id, "seq": command.seq, "kind": command.kind,
                                 "reason": command.reason, "issued_at": when,
                                 "expires_at": float(command.expires_at), "signed": signed})
                messages.append(Outgoing(wire.device_topic(device.device_id, wire.COMMAND), signed, retain=True))
            else:
                device.status = transitions.MISSED
            audit.append(AuditDraft(when, "hub", "missed-attestation", device.device_id,
                                    {"from": old, "to": device.status, "epoch": epoch}))
        store.save_devices(conn, list(devices.values()))
        store.insert_commands(conn, commands)
        append(store, conn, audit)
    return messages
