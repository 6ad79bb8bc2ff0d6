"""What every request handler of the HTTP API shares, and who is calling.

``ApiContext`` holds the settings, the store, the hub keys, the worker's
health view and metrics registry (when the API runs inside ``serve``), and
the broker enforcement. ``principal`` authenticates a request by bearer token
(RFC 6750 §2.1), the console's session cookie (which holds the same token),
or a TLS client certificate (ASGI TLS extension, verified by the server
against ``api_client_ca`` during the handshake).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from hub.broker.enforcement import BrokerEnforcer, NoEnforcement
from hub.config import Settings
from hub.crypto.hubkeys import HubKeys
from hub.server.api.tokens import Principal, check_token
from hub.server.http import HealthView
from hub.store import Store

SESSION_COOKIE = "hub_session"


@dataclass(slots=True)
class ApiContext:
    settings: Settings
    store: Store
    keys: HubKeys
    health: HealthView | None = None
    registry: CollectorRegistry | None = None
    enforcer: BrokerEnforcer = field(default_factory=NoEnforcement)
    publish: bool = True  # send signed commands through the broker (off only in unit tests without one)


def principal(ctx: ApiContext, scope: dict[str, Any], headers: Any, cookies: dict[str, str]) -> Principal | None:
    """The caller of a request, or None when it presents no valid credential."""
    authorization = headers.get("authorization", "")
    if authorization:
        kind, _, value = authorization.partition(" ")
        return check_token(ctx.store, value) if kind.lower() == "bearer" else None
    session = cookies.get(SESSION_COOKIE)
    if session:
        return check_token(ctx.store, session)
    chain = scope.get("extensions", {}).get("tls", {}).get("client_cert_chain") or []
    if chain and ctx.settings.api_client_ca:
        try:
            cert = x509.load_pem_x509_certificate(chain[0].encode("ascii"))
            names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        except ValueError:
            return None
        name = str(names[0].value) if names else cert.serial_number
        return Principal(f"cert:{name}"[:64], ctx.settings.api_client_cert_scope)
    return None


def csrf_token(session: str) -> str:
    """The console's CSRF token for a session: derived from the HttpOnly session cookie, which another site
    can neither read nor send with a cross-site form (SameSite=Strict), so it cannot forge this value."""
    return hmac.new(hashlib.sha256(session.encode()).digest(), b"console-csrf", hashlib.sha256).hexdigest()


def csrf_ok(session: str | None, presented: str | None) -> bool:
    return bool(session and presented) and hmac.compare_digest(csrf_token(str(session)), str(presented))
