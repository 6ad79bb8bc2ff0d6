"""The leader keeps its retained announcements in place: a replaced ``hub/epoch`` or ``hub/generation`` is put back.

Devices read the epoch (and its nonce) from the message retained on ``hub/epoch`` and verify it with the hub
key; ``serve`` reads both retained checkpoints to detect a restored database (hub/server/announced.py). On a
broker whose ACL lets another client write ``hub/#`` (a development broker, a mistaken ACL), that client can
replace or delete them: devices then find no epoch they can verify and stop attesting, and the restore check
loses its reference. The production ACL prevents this (broker_config/README.md); the leader also watches
the two topics and, when the retained message is not the latest it published (signed by another key,
malformed, empty, or one of its own that is older), logs a warning, counts it, and publishes its own again.

Re-publication is limited to one per topic per ``min_interval_s``: two hubs with different keys on one broker
would otherwise overwrite each other as fast as the broker carries messages. A replacement seen within the
interval is put right when it ends (``due``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hub import wire
from hub.crypto.keys import PublicKey
from hub.envelope import Outgoing
from hub.server.announced import epoch_of, generation_of

_READERS: dict[str, Callable[[bytes, PublicKey], int | None]] = {
    wire.EPOCH_TOPIC: epoch_of,
    wire.GENERATION_TOPIC: generation_of,
}
TOPICS = tuple(_READERS)
"""The retained topics the leader watches (subscribed without a share group, QoS 1)."""


@dataclass(slots=True)
class _Latest:
    signed: bytes
    value: int
    at: float  # when it was published (monotonic)


@dataclass(slots=True)
class RetainedGuard:
    """What the leader last published on each watched topic, and which of them must be published again.

    ``hub_key``: the hub's public key (COSE_Sign1 ES256, RFC 9052 §4.4). Times are monotonic seconds."""

    hub_key: PublicKey
    min_interval_s: float = 5.0
    replaced: dict[str, int] = field(default_factory=dict)
    """Replacements seen per topic (the ``attest_retained_replaced`` metric)."""
    _latest: dict[str, _Latest] = field(default_factory=dict)
    _pending: set[str] = field(default_factory=set)
    _last_fix: dict[str, float] = field(default_factory=dict)

    def published(self, topic: str, signed: bytes, value: int, at: float) -> None:
        """Record an announcement the leader published at ``at`` (``value``: its epoch or generation)."""
        if topic in _READERS:
            self._latest[topic] = _Latest(signed, value, at)
            self._pending.discard(topic)

    def observe(self, topic: str, payload: bytes, received_at: float) -> bool:
        """A message seen on a watched topic; True if it replaced the leader's latest announcement (then the
        announcement is due again, at once or when the interval since the last re-publication ends).

        A message received before the latest announcement was published (the retained one delivered at
        subscription, from this hub's previous run or from anyone) was itself replaced by that announcement."""
        latest = self._latest.get(topic)
        reader = _READERS.get(topic)
        if latest is None or reader is None or payload == latest.signed or received_at < latest.at:
            return False
        value = reader(payload, self.hub_key) if payload else None
        if value is not None and value >= latest.value:
            return False  # signed with this hub's key and not older: another process of this hub (accept-restore)
        self.replaced[topic] = self.replaced.get(topic, 0) + 1
        self._pending.add(topic)
        return True

    def due(self, now: float) -> list[Outgoing]:
        """The announcements to publish again now (retained), at most one per topic per ``min_interval_s``."""
        out = []
        for topic in sorted(self._pending):
            if now - self._last_fix.get(topic, float("-inf")) < self.min_interval_s:
                continue
            self._pending.discard(topic)
            self._last_fix[topic] = now
            out.append(Outgoing(topic, self._latest[topic].signed, retain=True))
        return out
