"""Bearer tokens of the HTTP API: ``attest-hub token create|list|revoke``, and checking a presented token.

A token reads ``ahk_<id>_<secret>``: the id (12 hex digits) finds the row,
the secret (32 random bytes, base64url) is compared as its SHA-256 in
constant time (``hmac.compare_digest``). Only the hash is stored, so a copy
of the database grants nothing. The secret has 256 bits of entropy, so a
slow password hash adds no protection (RFC 6750 §5.2 asks for unguessable
tokens; a stolen table must not yield them). Creation and revocation are audited.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from hub.audit import AuditDraft, append
from hub.store import Store, views

SCOPES = ("read", "operate")
_TOKEN = re.compile(r"ahk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,48}")


class TokenError(ValueError):
    """A token cannot be created or revoked; the message says why."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: ``actor`` as written to the audit log, ``scope`` ``read`` or ``operate``."""

    actor: str
    scope: str
    token_id: str | None = None

    def may(self, scope: str) -> bool:
        return scope == "read" or self.scope == "operate"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def create_token(store: Store, name: str, scope: str, *, ttl_s: float | None, actor: str = "operator",
                 now: float | None = None) -> tuple[str, dict[str, Any]]:
    """A new token: returns the token text (shown once) and its stored row (without the secret)."""
    if scope not in SCOPES:
        raise TokenError(f"scope must be one of {', '.join(SCOPES)}")
    if not _NAME.fullmatch(name):
        raise TokenError("name: 1-48 of letters, digits and . _ @ -")
    at = time.time() if now is None else now
    token_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
    row = {"token_id": token_id, "name": name, "scope": scope, "secret_sha256": _digest(secret),
           "created_at": at, "created_by": actor[:64], "expires_at": None if ttl_s is None else at + ttl_s,
           "revoked_at": None}
    with store.transaction() as conn:
        views.insert_token(conn, row)
        append(store, conn, [AuditDraft(at, actor, "token-create", None,
                                        {"token": token_id, "name": name, "scope": scope,
                                         "expires_at": row["expires_at"]})])
    return f"ahk_{token_id}_{secret}", {k: v for k, v in row.items() if k != "secret_sha256"}


def revoke_token(store: Store, token_id: str, actor: str = "operator") -> None:
    at = time.time()
    with store.transaction() as conn:
        if not views.revoke_token(conn, token_id, at):
            raise TokenError(f"no active token {token_id!r}")
        append(store, conn, [AuditDraft(at, actor, "token-revoke", None, {"token": token_id})])


def list_tokens(store: Store) -> list[dict[str, Any]]:
    with store.reading() as conn:
        return [{k: v for k, v in row.items() if k != "secret_sha256"} for row in views.tokens(conn)]


def check_token(store: Store, text: str, now: float | None = None) -> Principal | None:
    """The principal of a presented token, or None if it is malformed, unknown, wrong, expired or revoked."""
    match = _TOKEN.fullmatch(text.strip())
    if match is None:
        return None
    token_id, secret = match.groups()
    with store.reading() as conn:
        row = views.token(conn, token_id)
    presented = _digest(secret)
    if row is None:
        hmac.compare_digest(presented, "0" * 64)  # the same work whether or not the id exists
        return None
    if not hmac.compare_digest(presented, str(row["secret_sha256"])):
        return None
    at = time.time() if now is None else now
    if row["revoked_at"] is not None or (row["expires_at"] is not None and at >= float(row["expires_at"])):
        return None
    return Principal(f"token:{row['name']}"[:64], str(row["scope"]), token_id)
