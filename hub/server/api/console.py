"""The web console under ``/console``: server-rendered pages (Jinja2), plain forms, live updates by SSE.

Sign-in takes an API token and keeps it in an HttpOnly, SameSite=Strict
cookie; quarantine and release are forms that carry a CSRF token derived from
that cookie (``context.csrf_token``) and need the ``operate`` scope. Pages work
without JavaScript; a few lines of it (static/console.js) apply server-sent
events (``/console/events``) to the page so a verdict shows as it lands.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Request, Response, Router, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, QueryParameter
from litestar.response import Redirect, ServerSentEvent, Template
from litestar.response.sse import ServerSentEventMessage

from hub.appraisal.report import build_report, format_age
from hub.appraisal.results import ResultError, verify_result
from hub.server.api.common import ProblemError, ctx_of, device_id_param, who
from hub.server.api.context import SESSION_COOKIE, ApiContext, csrf_ok, csrf_token
from hub.server.api.tokens import Principal, check_token
from hub.server.api.v1 import EAT_JWT, _act, device_detail, list_page, result_jwt
from hub.store import views

STATUSES = ("enrolled", "trusted", "warning", "quarantined", "revoked")
FORM = Body(media_type=RequestEncodingType.URL_ENCODED)


def _signed_in(request: Request[Any, Any, Any]) -> Principal:
    caller = who(request)
    if caller is None:
        raise _to_login()
    return caller


def _to_login() -> ProblemError:
    return ProblemError(status_code=401, detail="sign in first", headers={"Location": "/console/login"})


def _page(request: Request[Any, Any, Any], name: str, caller: Principal, **context: Any) -> Template:
    session = request.cookies.get(SESSION_COOKIE, "")
    return Template(name, context={"caller": caller, "csrf": csrf_token(session) if session else "",
                                   "fmt_time": _fmt_time, "fmt_age": format_age, "now": time.time(), **context})


def _fmt_time(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at else "never"


@get("/login", sync_to_thread=False)
def login_page(error: Annotated[str | None, QueryParameter(max_length=8)] = None) -> Template:
    return Template("login.html", context={"error": error, "caller": None})


@post("/login", sync_to_thread=True, status_code=303)
def login(request: Request[Any, Any, Any], data: Annotated[dict[str, str], FORM]) -> Response[Any]:
    token = data.get("token", "").strip()
    if check_token(ctx_of(request).store, token) is None:
        return Redirect("/console/login?error=1", status_code=303)
    response = Redirect("/console/", status_code=303)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https", max_age=12 * 3600)
    return response


@post("/logout", sync_to_thread=False, status_code=303)
def logout() -> Response[Any]:
    response = Redirect("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _ttq_chart(ctx: ApiContext) -> list[dict[str, Any]]:
    """Time to quarantine from this worker's own histogram: one bar per bucket (non-cumulative)."""
    if ctx.registry is None:
        return []
    bars: list[dict[str, Any]] = []
    previous = 0.0
    for metric in ctx.registry.collect():
        if metric.name != "attest_time_to_quarantine_seconds":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                count = float(sample.value) - previous
                previous = float(sample.value)
                bars.append({"le": sample.labels["le"], "count": int(count)})
    top = max((b["count"] for b in bars), default=0) or 1
    for bar in bars:
        bar["pct"] = round(100 * bar["count"] / top)
    return bars


@get("/", sync_to_thread=True)
def overview(request: Request[Any, Any, Any]) -> Template:
    caller = _signed_in(request)
    ctx = ctx_of(request)
    report = build_report(ctx.store)
    return _page(request, "overview.html", caller, report=report, quarantines=report.quarantines[:15],
                 ttq=_ttq_chart(ctx))


@get("/devices", sync_to_thread=True)
def devices(
    request: Request[Any, Any, Any],
    q: Annotated[str | None, QueryParameter(max_length=64)] = None,
    device_class: Annotated[str | None, QueryParameter(name="class", max_length=64)] = None,
    status: Annotated[str | None, QueryParameter(max_length=24)] = None,
    firmware: Annotated[str | None, QueryParameter(max_length=64)] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
    limit: Annotated[int, QueryParameter()] = 50,
) -> Template:
    caller = _signed_in(request)
    ctx = ctx_of(request)
    where = views.DeviceFilter(device_class or None, status or None, firmware or None, None, None, q or None)
    page = list_page(ctx, where, cursor or None, limit)
    with ctx.store.reading() as conn:
        classes = sorted(views.count_by(conn, "device_class"))
    query = {"q": q or "", "class": device_class or "", "status": status or "", "firmware": firmware or ""}
    return _page(request, "devices.html", caller, page=page, query=query, classes=classes, statuses=STATUSES)


@get("/devices/{device_id:str}", sync_to_thread=True)
def device_page(request: Request[Any, Any, Any], device_id: FromPath[str],
                done: Annotated[str | None, QueryParameter(max_length=20)] = None) -> Template:
    caller = _signed_in(request)
    ctx = ctx_of(request)
    device_id = device_id_param(device_id)
    detail = device_detail(ctx, device_id, time.time())
    with ctx.store.reading() as conn:
        row = views.latest_result(conn, device_id)
    result: dict[str, Any] | None = None
    if row is not None:
        try:
            result = {"ok": True, **verify_result(bytes(row["signed"]), ctx.keys.public_key).to_json()}
        except ResultError as exc:
            result = {"ok": False, "error": str(exc)}
    reason = next((c.reason for c in detail.commands if c.kind in ("quarantine", "release", "remediate")), "")
    return _page(request, "device.html", caller, d=detail, result=result, reason=reason, done=done)


@get("/devices/{device_id:str}/result.jwt", sync_to_thread=True)
def device_result_jwt(request: Request[Any, Any, Any], device_id: FromPath[str]) -> Response[bytes]:
    """The device's standing result as a JWT EAR, to download (the API gives it for ``Accept: application/eat+jwt``)."""
    _signed_in(request)
    ctx = ctx_of(request)
    device_id = device_id_param(device_id)
    with ctx.store.reading() as conn:
        row = views.latest_result(conn, device_id)
    if row is None:
        raise ProblemError(status_code=404, detail=f"no result for {device_id!r}")
    return Response(result_jwt(ctx, bytes(row["signed"])).encode("ascii"), media_type=EAT_JWT,
                    headers={"Content-Disposition": f'attachment; filename="{device_id}.jwt"'})


@post("/devices/{device_id:str}/{action:str}", sync_to_thread=True, status_code=303)
def device_action(request: Request[Any, Any, Any], device_id: FromPath[str], action: FromPath[str],
                  data: Annotated[dict[str, str], FORM]) -> Response[Any]:
    caller = _signed_in(request)
    if not csrf_ok(request.cookies.get(SESSION_COOKIE), data.get("csrf")):
        raise ProblemError(status_code=403, detail="the form's CSRF token is missing or wrong; reload the page")
    if action not in ("quarantine", "release"):
        raise ProblemError(status_code=404, detail=f"no console action {action!r}")
    if not caller.may("operate"):
        raise ProblemError(status_code=403, detail="this needs a credential with the 'operate' scope")
    device_id = device_id_param(device_id)
    _act(request, device_id, action, data.get("reason", ""))
    return Redirect(f"/console/devices/{device_id}?done={action}", status_code=303)


@get("/events")
async def events(request: Request[Any, Any, Any]) -> ServerSentEvent:
    """Status changes and verdicts as they are committed (polled from the audit log once a second, so it
    works whichever process or machine wrote them)."""
    await asyncio.to_thread(_signed_in, request)
    ctx = ctx_of(request)

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        feed = await asyncio.to_thread(_feed, ctx)
        while True:
            rows = await asyncio.to_thread(_changes, ctx, feed)
            for row in rows:
                after = int(row["id"])
                detail = json.loads(row["detail"])
                event = {"device_id": row["device_id"], "action": row["action"], "at": row["at"],
                         "status": detail.get("to") or detail.get("status"),
                         "reason": detail.get("reason") or "; ".join(detail.get("problems") or [])}
                yield ServerSentEventMessage(data=json.dumps(event), event="device", id=str(after))
            if not rows:
                yield ServerSentEventMessage(comment="keep-alive")
                await asyncio.sleep(1.0)

    return ServerSentEvent(stream())


def _feed(ctx: ApiContext) -> views.ChangeFeed:
    with ctx.store.reading() as conn:
        return views.ChangeFeed(conn)


def _changes(ctx: ApiContext, feed: views.ChangeFeed) -> list[dict[str, Any]]:
    with ctx.store.reading() as conn:
        return feed.poll(conn)


console_router = Router(path="/console", include_in_schema=False, route_handlers=[
    login_page, login, logout, overview, devices, device_page, device_result_jwt, device_action, events,
])
