"""The versioned API under ``/v1``: devices, results, manifests, policies, audit export, report, actions.

Reads need the ``read`` scope, actions (quarantine, release, challenge,
revoke) the ``operate`` scope; every action is audited with its actor.
Device pages are keyset-paged (``cursor`` is opaque): the same cost on the
first page and the ten-thousandth. Errors are RFC 9457 problem details.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Request, Response, Router, get, post
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Schema
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream

from hub import wire
from hub.anomaly.records import findings
from hub.appraisal.challenge import make_challenge
from hub.appraisal.messages import sign_result_jwt
from hub.appraisal.operations import OperationError, publish_once, revoke, set_quarantine
from hub.appraisal.report import build_report
from hub.appraisal.results import ResultError, result_claims
from hub.broker.enforcement import EnforcementError
from hub.broker.transport import TransportError
from hub.envelope import Outgoing
from hub.server.api.common import ProblemError, ctx_of, device_id_param, operate_scope, read_scope, who
from hub.server.api.context import ApiContext
from hub.store import DeviceRecord, views

EAT_CWT = "application/eat+cwt"
EAT_JWT = "application/eat+jwt"
RESULT_TYPES = (EAT_CWT, EAT_JWT)
_OUTSIDE_QUOTES = {sep: re.compile(rf'(?:[^{sep}"]|"[^"]*")+') for sep in ",;"}  # RFC 9110 §5.6.4 quoted-string
AUDIT_FIELDS = ("id", "at", "actor", "action", "device_id", "detail", "chain", "seq", "prev_hash", "entry_hash")


@dataclass
class DeviceSummary:
    device_id: str
    device_class: str
    status: str
    firmware: str | None
    last_seen: float | None
    problems: list[str]


@dataclass
class DevicePage:
    items: list[DeviceSummary]
    limit: int
    next_cursor: str | None
    """Pass as ``cursor`` for the next page; null on the last page."""


@dataclass
class VerdictView:
    at: float
    scheme: str
    evidence: str
    status: str
    action: str
    problems: list[str]
    manifest: str | None
    policy: str
    trace_id: str


@dataclass
class CommandView:
    seq: int
    kind: str
    reason: str
    issued_at: float
    expires_at: float
    outstanding: bool


@dataclass
class FindingView:
    id: int
    kind: str
    score: float
    explanation: str
    first_seen: float
    last_seen: float
    open: bool


@dataclass
class DeviceDetail:
    device_id: str
    device_class: str
    status: str
    revoked: bool
    firmware: str | None
    trust_vector: dict[str, int]
    problems: list[str]
    last_seen: float | None
    enrolled_at: float
    reboots: int
    verdicts: list[VerdictView]
    findings: list[FindingView]
    commands: list[CommandView]
    result: str | None
    """Path of the device's latest signed result, if it has one."""


@dataclass
class ManifestView:
    device_class: str
    sequence: int
    signer: str
    received_at: float
    signed: str
    """The signed manifest (COSE_Sign1, docs/PROTOCOL.md), base64."""


@dataclass
class PolicyView:
    device_class: str
    version: int
    received_at: float
    source: str
    """The policy's TOML text."""


@dataclass
class ActionRequest:
    reason: str


@dataclass
class ActionResult:
    device_id: str
    action: str
    actor: str
    delivered: bool
    """Whether the signed command reached the broker (the action itself is committed either way)."""
    nonce: str | None = None


def summary(d: DeviceRecord) -> DeviceSummary:
    return DeviceSummary(d.device_id, d.device_class, d.status, d.firmware_version, d.last_seen,
                         json.loads(d.last_problems))


def encode_cursor(device_id: str) -> str:
    return base64.urlsafe_b64encode(device_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", cursor):
            raise ValueError(cursor)
        after = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not after:
            raise ValueError(cursor)
        return after
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ProblemError(status_code=400, detail="cursor: not a cursor this API issued") from exc


def list_page(ctx: ApiContext, where: views.DeviceFilter, cursor: str | None, limit: int) -> DevicePage:
    if not 1 <= limit <= ctx.settings.api_page_max:
        raise ProblemError(status_code=400, detail=f"limit: must be 1..{ctx.settings.api_page_max}")
    after = decode_cursor(cursor) if cursor else None
    with ctx.store.reading() as conn:
        rows = views.device_page(conn, where, after, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return DevicePage([summary(d) for d in rows], limit, encode_cursor(rows[-1].device_id) if more else None)


@get("/devices", guards=[read_scope], sync_to_thread=True, summary="List devices (filtered, cursor-paged)")
def list_devices(
    request: Request[Any, Any, Any],
    device_class: Annotated[str | None, QueryParameter(name="class", max_length=64)] = None,
    status: Annotated[str | None, QueryParameter(max_length=24)] = None,
    firmware: Annotated[str | None, QueryParameter(max_length=64)] = None,
    seen_after: Annotated[float | None, QueryParameter(description="Unix seconds: seen at or after")] = None,
    seen_before: Annotated[float | None, QueryParameter(description="Unix seconds: not seen since (or never)")] = None,
    q: Annotated[str | None, QueryParameter(max_length=64, description="device id prefix")] = None,
    cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
    limit: Annotated[int, QueryParameter()] = 50,
) -> DevicePage:
    where = views.DeviceFilter(device_class, status, firmware, seen_after, seen_before, q)
    return list_page(ctx_of(request), where, cursor, limit)


def device_detail(ctx: ApiContext, device_id: str, now: float) -> DeviceDetail:
    with ctx.store.reading() as conn:
        record = ctx.store.devices(conn, [device_id]).get(device_id)
        if record is None:
            raise ProblemError(status_code=404, detail=f"no device {device_id!r}")
        verdicts = views.verdicts_for(conn, device_id)
        commands = views.commands_for(conn, device_id)
        found = findings(conn, open_only=False, device_id=device_id, limit=20)
        result = views.latest_result(conn, device_id)
    return DeviceDetail(
        record.device_id, record.device_class, record.status, record.revoked, record.firmware_version,
        json.loads(record.trust_vector), json.loads(record.last_problems), record.last_seen, record.enrolled_at,
        record.reboots,
        [VerdictView(v["received_at"], v["scheme"], v["dedup_key"], v["status"], v["action"],
                     json.loads(v["problems"]), v["manifest_ref"], v["policy_ref"], v["trace_id"]) for v in verdicts],
        [FindingView(f["id"], f["kind"], f["score"], f["explanation"], f["first_seen"], f["last_seen"],
                     bool(f["is_open"])) for f in found],
        [CommandView(c["seq"], c["kind"], c["reason"], c["issued_at"], c["expires_at"], c["expires_at"] > now)
         for c in commands],
        f"/v1/devices/{device_id}/result" if result else None,
    )


@get("/devices/{device_id:str}", guards=[read_scope], sync_to_thread=True, summary="One device")
def get_device(request: Request[Any, Any, Any], device_id: FromPath[str]) -> DeviceDetail:
    return device_detail(ctx_of(request), device_id_param(device_id), time.time())


@dataclass
class ResultOperation(Operation):
    """The result endpoint's OpenAPI operation: its 200 response lists both negotiated types (OpenAPI 3.1
    §4.8.17, a ``content`` map keyed by media type); Litestar's route declares only the default one."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            content = dict(ok.content or {})
            content[EAT_CWT] = OpenAPIMediaType(schema=Schema(
                type=OpenAPIType.STRING, content_media_type=EAT_CWT,
                description="COSE_Sign1 (RFC 9052 §4.2) EAR, tag 18, as published on the result topic"))
            content[EAT_JWT] = OpenAPIMediaType(schema=Schema(
                type=OpenAPIType.STRING, content_media_type=EAT_JWT,
                description="JWT EAR (RFC 7519, compact serialization), ES256"))
            ok.content = content


@get("/devices/{device_id:str}/result", guards=[read_scope], sync_to_thread=True, operation_class=ResultOperation,
     summary="The device's latest signed attestation result",
     description=f"Content negotiation (`Accept`, RFC 9110 §12.5.1): `{EAT_CWT}` (the default) is the COSE_Sign1 "
                 f"EAR exactly as the hub signed and published it; `{EAT_JWT}` is the same claims as an ES256 JWT "
                 "EAR (RFC 7519, the JSON claim names EAR libraries read), signed on request. Any other type: 406.",
     response_description="COSE_Sign1 bytes, or the JWT's compact serialization", media_type=EAT_CWT)
def get_result(request: Request[Any, Any, Any], device_id: FromPath[str]) -> Response[bytes]:
    wanted = negotiate(request.headers.get("accept", ""), RESULT_TYPES)
    if wanted is None:
        raise ProblemError(status_code=406, detail=f"this endpoint serves {' or '.join(RESULT_TYPES)}")
    ctx = ctx_of(request)
    device_id = device_id_param(device_id)
    with ctx.store.reading() as conn:
        row = views.latest_result(conn, device_id)
    if row is None:
        raise ProblemError(status_code=404, detail=f"no result for {device_id!r}")
    vary = {"Vary": "Accept"}
    if wanted == EAT_JWT:
        return Response(result_jwt(ctx, bytes(row["signed"])).encode("ascii"), media_type=EAT_JWT, headers=vary)
    return Response(bytes(row["signed"]), media_type=EAT_CWT,
                    headers={"Content-Disposition": f'attachment; filename="{device_id}.cbor"', **vary})


def result_jwt(ctx: ApiContext, signed: bytes) -> str:
    """A stored result's claims as a JWT EAR signed now with the hub key (``iat`` stays the appraisal's)."""
    try:
        claims = result_claims(signed, ctx.keys.public_key)
    except ResultError as exc:
        raise ProblemError(status_code=500, detail=f"the stored result cannot be read: {exc}") from exc
    return sign_result_jwt(claims, ctx.keys.signing_key, ctx.keys.kid)


def negotiate(accept: str, offered: tuple[str, ...]) -> str | None:
    """The offered media type the ``Accept`` value prefers (RFC 9110 §12.5.1): each offer takes the quality of
    the most specific range that matches it (``q=0``: not acceptable); ties go to the first offered. An empty
    or absent header accepts anything. A range's ``eat_profile`` parameter must name the hub's EAR profile."""
    if not accept.strip():
        return offered[0]
    best: tuple[float, str] | None = None
    for offer in offered:
        main, _, sub = offer.partition("/")
        quality, specificity = 0.0, -1
        for item in _OUTSIDE_QUOTES[","].findall(accept):
            media, *params = (p.strip() for p in _OUTSIDE_QUOTES[";"].findall(item))
            names = {k.strip().lower(): v.strip() for k, _, v in (p.partition("=") for p in params)}
            r_main, _, r_sub = media.lower().partition("/")
            if r_main not in ("*", main) or r_sub not in ("*", sub) or (r_main == "*" and r_sub != "*"):
                continue
            if names.get("eat_profile", wire.EAR_PROFILE).strip('"') != wire.EAR_PROFILE:
                continue
            rank = (r_main != "*") + (r_sub != "*") + bool(set(names) - {"q"})
            if rank > specificity:
                try:
                    quality = min(max(float(names.get("q", "1")), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
                specificity = rank
        if quality > 0 and (best is None or quality > best[0]):
            best = (quality, offer)
    return None if best is None else best[1]


@get("/manifests", guards=[read_scope], sync_to_thread=True, summary="Manifest history (signed bytes in base64)")
def list_manifests(request: Request[Any, Any, Any],
                   device_class: Annotated[str | None, QueryParameter(name="class")] = None) -> list[ManifestView]:
    ctx = ctx_of(request)
    with ctx.store.reading() as conn:
        rows = ctx.store.manifest_history(conn, device_class)
    return [ManifestView(r["device_class"], r["sequence"], r["signer"], r["received_at"],
                         base64.b64encode(bytes(r["signed"])).decode()) for r in rows]


@get("/policies", guards=[read_scope], sync_to_thread=True, summary="Policy history (TOML sources)")
def list_policies(request: Request[Any, Any, Any],
                  device_class: Annotated[str | None, QueryParameter(name="class")] = None) -> list[PolicyView]:
    ctx = ctx_of(request)
    with ctx.store.reading() as conn:
        rows = ctx.store.policy_history(conn, device_class)
    return [PolicyView(r["device_class"], r["version"], r["received_at"], r["source"]) for r in rows]


@get("/report", guards=[read_scope], sync_to_thread=True, summary="Fleet compliance report")
def get_report(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return build_report(ctx_of(request).store).to_json()


@get("/audit", guards=[read_scope], summary="Audit export (JSON Lines, streamed, with the hash chain)",
     media_type="application/x-ndjson")
async def export_audit(request: Request[Any, Any, Any], since: Annotated[float | None, QueryParameter()] = None,
                       until: Annotated[float | None, QueryParameter()] = None) -> Stream:
    ctx = ctx_of(request)

    def lines() -> Iterator[bytes]:
        after = 0
        # One snapshot for the whole export (Store.snapshot): paged by id in separate statements, an entry
        # that commits after a higher id was read would be missing, and its chain would look cut.
        with ctx.store.snapshot() as conn:
            while True:  # in chunks of 1000 by id, so memory stays flat however long the period
                rows = views.audit_after(conn, after, since, until, 1000)
                if not rows:
                    return
                for row in rows:
                    yield (json.dumps({k: row[k] for k in AUDIT_FIELDS}, sort_keys=True) + "\n").encode()
                after = int(rows[-1]["id"])

    return Stream(lines(), media_type="application/x-ndjson")


def _deliver(ctx: ApiContext, message: Outgoing) -> bool:
    if not ctx.publish:
        return False
    try:
        # A client id of its own per action: two concurrent actions must not take over each other's session.
        publish_once(ctx.settings, [message], f"{ctx.settings.hub_id}-api-{secrets.token_hex(4)}")
    except TransportError:
        return False
    return True


def _act(request: Request[Any, Any, Any], device_id: FromPath[str], action: str, reason: str) -> ActionResult:
    ctx = ctx_of(request)
    caller = who(request)
    assert caller is not None  # the guard let it through
    device_id = device_id_param(device_id)
    if action in ("quarantine", "release", "revoke") and not reason.strip():
        raise ProblemError(status_code=400, detail="reason: required")
    nonce = None
    try:
        if action == "revoke":
            revoke(ctx.store, device_id, reason[:500], actor=caller.actor, enforcer=ctx.enforcer)
            delivered = True
        elif action == "challenge":
            message, raw_nonce = make_challenge(ctx.store, ctx.keys, device_id, ctx.settings.command_ttl_s,
                                                actor=caller.actor)
            nonce = raw_nonce.hex()
            delivered = _deliver(ctx, message)
        else:
            message = set_quarantine(ctx.store, ctx.keys, device_id, action == "quarantine", reason[:500],
                                     ctx.settings.command_ttl_s, actor=caller.actor, enforcer=ctx.enforcer)
            delivered = _deliver(ctx, message)
    except OperationError as exc:
        status = 404 if str(exc).startswith("unknown device") else 409
        raise ProblemError(status_code=status, detail=str(exc)) from exc
    except EnforcementError as exc:
        raise ProblemError(status_code=502, detail=f"recorded, but the broker did not apply it: {exc}") from exc
    return ActionResult(device_id, action, caller.actor, delivered, nonce)


@post("/devices/{device_id:str}/quarantine", guards=[operate_scope], sync_to_thread=True, status_code=200,
      summary="Quarantine a device until an operator releases it")
def quarantine(request: Request[Any, Any, Any], device_id: FromPath[str],
               data: JSONBody[ActionRequest]) -> ActionResult:
    return _act(request, device_id, "quarantine", data.reason)


@post("/devices/{device_id:str}/release", guards=[operate_scope], sync_to_thread=True, status_code=200,
      summary="Release a quarantined device")
def release(request: Request[Any, Any, Any], device_id: FromPath[str], data: JSONBody[ActionRequest]) -> ActionResult:
    return _act(request, device_id, "release", data.reason)


@post("/devices/{device_id:str}/revoke", guards=[operate_scope], sync_to_thread=True, status_code=200,
      summary="Revoke a device's key")
def revoke_device(request: Request[Any, Any, Any], device_id: FromPath[str],
                  data: JSONBody[ActionRequest]) -> ActionResult:
    return _act(request, device_id, "revoke", data.reason)


@post("/devices/{device_id:str}/challenge", guards=[operate_scope], sync_to_thread=True, status_code=200,
      summary="Send a single-use challenge; the result echoing its nonce follows on the result topic")
def challenge(request: Request[Any, Any, Any], device_id: FromPath[str]) -> ActionResult:
    return _act(request, device_id, "challenge", "on-demand attestation")


v1_router = Router(path="/v1", route_handlers=[
    list_devices, get_device, get_result, list_manifests, list_policies, get_report, export_audit,
    quarantine, release, revoke_device, challenge,
])
