"""A small JSON-over-HTTPS client for brokers' management APIs (EMQX, HiveMQ), on the standard library.

Why not a third-party HTTP client: every call here is one short JSON request with HTTP Basic credentials
and a pinned CA, made from a worker thread that already blocks; ``urllib`` does that, with no new
dependency in the verifier.

Credentials come from a file (``broker_api_key_file``) holding ``name:secret`` on one line, which
must be owner-only (no group or other bits), like every other secret of the hub.

Exceptions::

    EnforcementError   unreachable API, a status code the caller did not accept, unreadable answer,
                       credentials file missing or readable by others
"""

from __future__ import annotations

import base64
import json
import ssl
import stat
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.broker.enforcement import EnforcementError

__all__ = ["ApiResponse", "HttpApi", "quote", "read_credentials"]


def quote(segment: str) -> str:
    """One URL path segment, percent-encoded (RFC 3986 §2.1): a device id may hold any printable character."""
    return urllib.parse.quote(segment, safe="")


def read_credentials(path: Path) -> tuple[str, str]:
    """``(name, secret)`` from an owner-only file holding ``name:secret``."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise EnforcementError(f"cannot read the broker API credentials {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise EnforcementError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    name, sep, secret = text.partition(":")
    if not sep or not name or not secret or "\n" in text:
        raise EnforcementError(f"{path} must hold one line 'name:secret'")
    return name, secret


@dataclass(frozen=True, slots=True)
class ApiResponse:
    status: int
    body: Any  # the decoded JSON, or None for an empty body


class HttpApi:
    """``request(method, path, body, ok=...)`` against ``base_url`` with Basic credentials and a CA file."""

    def __init__(self, base_url: str, credentials: tuple[str, str] | None = None, ca_file: str = "",
                 timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise EnforcementError(f"broker_api_url {base_url!r} is not an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self._auth = None
        if credentials is not None:
            token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode("ascii")
            self._auth = f"Basic {token}"
        self._context = ssl.create_default_context(cafile=ca_file or None) if parsed.scheme == "https" else None
        self._timeout = timeout

    def request(self, method: str, path: str, body: object = None, *, ok: Collection[int] = (200, 201, 204),
                query: dict[str, str] | None = None) -> ApiResponse:
        url = self.base_url + path + (("?" + urllib.parse.urlencode(query)) if query else "")
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (scheme checked in __init__)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self._auth:
            req.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(req, timeout=self._timeout, context=self._context) as resp:  # noqa: S310
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise EnforcementError(f"broker API {method} {path}: {exc}") from exc
        if status not in ok:
            detail = raw[:200].decode("utf-8", "replace")
            raise EnforcementError(f"broker API {method} {path}: HTTP {status} {detail}")
        try:
            return ApiResponse(status, json.loads(raw) if raw.strip() else None)
        except ValueError as exc:
            raise EnforcementError(f"broker API {method} {path}: the answer is not JSON") from exc
