"""Pieces every route module of the HTTP API uses: guards (scopes), RFC 9457 problem details, id checks."""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.handlers import BaseRouteHandler

from hub.crypto.pki import PkiError, validate_device_id
from hub.server.api.context import ApiContext, principal
from hub.server.api.tokens import Principal
from hub.store import StoreError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ProblemError(HTTPException):
    """An error answered as problem details with this status and detail."""


def ctx_of(connection: ASGIConnection[Any, Any, Any, Any]) -> ApiContext:
    ctx = connection.app.state.ctx
    assert isinstance(ctx, ApiContext)
    return ctx


def who(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
    """The caller (cached on the request's state)."""
    if "principal" not in connection.state:
        connection.state.principal = principal(ctx_of(connection), dict(connection.scope), connection.headers,
                                               connection.cookies)
    found = connection.state.principal
    return found if isinstance(found, Principal) else None


def _guard(scope: str) -> Any:
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
        caller = await asyncio.to_thread(who, connection)  # a token lookup is a database read: off the loop
        if caller is None:
            raise NotAuthorizedException("a bearer token or an operator client certificate is required",
                                         headers={"WWW-Authenticate": 'Bearer realm="attest-hub"'})
        if not caller.may(scope):
            raise PermissionDeniedException(f"this needs a credential with the {scope!r} scope")

    return guard


read_scope = _guard("read")
operate_scope = _guard("operate")


def device_id_param(value: str) -> str:
    """A device id from a path: the enrolment rules (no '/', '+', '#', controls...), and never '.' or '..'."""
    if value in (".", ".."):
        raise ProblemError(status_code=400, detail="not a device id")
    try:
        return validate_device_id(value)
    except PkiError as exc:
        raise ProblemError(status_code=400, detail=f"not a device id: {exc}") from exc


def problem_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Every error as RFC 9457 problem details (``application/problem+json``, §3.1 members)."""
    headers: dict[str, str] = {}
    if isinstance(exc, HTTPException):
        status = exc.status_code
        detail = str(exc.detail)
        if isinstance(exc, ValidationException) and exc.extra:
            detail = "; ".join(f"{e.get('key', '')}: {e.get('message', '')}" for e in exc.extra
                               if isinstance(e, dict)) or detail
        headers = dict(exc.headers or {})
    elif isinstance(exc, StoreError):
        status, detail = 503, f"the database is unavailable: {exc}"
    else:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        status, detail = 500, "internal error (logged)"
    if status == 401 and (request.url.path + "/").startswith("/console/"):
        return Response("", status_code=303, headers={"Location": "/console/login"})
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail,
            "instance": request.url.path}
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)
