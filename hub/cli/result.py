"""``attest-hub result show`` (a device's standing attestation result as a CWT or JWT EAR) and
``attest-hub result verify`` (check a signed result with the hub key and print its claims)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from hub import wire
from hub.appraisal.messages import result_from_verdict, sign_result, sign_result_jwt
from hub.appraisal.results import ResultError, verify_result
from hub.cli.common import HubContext, emit, fail, json_option, pass_hub
from hub.schemes import SchemeRegistry, default_schemes
from hub.store import StoreError
from hub.store.views import latest_result


@click.group()
def result() -> None:
    """Attestation results (EAR, draft-ietf-rats-ear) as relying parties read them."""


@result.command("show")
@click.argument("device_id")
@click.option("--format", "fmt", type=click.Choice(["jwt", "cwt"]), default="jwt", show_default=True,
              help="jwt: ES256 JWT (RFC 7519), as EAR libraries and tools read it; cwt: the COSE_Sign1 the hub "
                   "publishes on fleet/{id}/result (printed as hex).")
@click.option("--scheme", default=None, help="The newest result of this evidence scheme instead of the standing "
                                             "platform result (firmware, tpm or psa).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the token to this file (the JWT text, or the CWT bytes).")
@json_option
@pass_hub
def show(hub: HubContext, device_id: str, fmt: str, scheme: str | None, out: Path | None) -> None:
    """Sign and print the device's standing result: its newest verdict that was not a rejection.

    The claims are the stored verdict's, ``iat`` the time of the appraisal; no ``eat_nonce`` (the verdict
    row does not keep the evidence's nonce). Exit 1 if the device has no such result.

    \b
    Examples:
      attest-hub result show sensor-0001 --format jwt
      attest-hub result show sensor-0001 --format cwt --out sensor-0001.ear.cbor
    """
    schemes = [scheme] if scheme else sorted(SchemeRegistry(default_schemes()).platform_schemes)
    try:
        store = hub.store()
        with store.reading() as conn:
            row = store.standing_verdict(conn, device_id, schemes)
            known = bool(store.devices(conn, [device_id]))
    except StoreError as exc:
        fail(str(exc), code=3)
    if not known:
        fail(f"unknown device {device_id!r}")
    if row is None:
        fail(f"no attestation result for {device_id!r} ({', '.join(schemes)})")
    keys = hub.keys()
    claims = result_from_verdict(row)
    if fmt == "jwt":
        token: str | bytes = sign_result_jwt(claims, keys.signing_key, keys.kid)
        text = str(token)
    else:
        token = sign_result(claims, keys.signing_key, keys.kid)
        text = token.hex()
    if out is not None:
        if isinstance(token, str):
            out.write_text(token + "\n")
        else:
            out.write_bytes(token)
    media_type = wire.EAR_JWT_MEDIA_TYPE if fmt == "jwt" else wire.EAR_MEDIA_TYPE
    emit(hub, {"device_id": device_id, "scheme": claims.scheme, "format": fmt, "media_type": media_type,
               "token": text, "claims": claims.json_claims()},
         lambda d: click.echo(d["token"]))


@result.command("verify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
                required=False)
@click.option("--device", "device_id", default=None, help="Verify the device's latest stored result instead.")
@json_option
@pass_hub
def result_verify(hub: HubContext, file: Path | None, device_id: str | None) -> None:
    """Check a result's signature with the hub key and print its claims (exit 1 if it does not verify).

    \b
    Examples:
      curl -H "Authorization: Bearer $T" http://127.0.0.1:8080/v1/devices/env-sensor-0001/result > r.cbor
      attest-hub result verify r.cbor
      attest-hub result verify --device env-sensor-0001 --json
    """
    if (file is None) == (device_id is None):
        fail("give a FILE or --device ID", code=2)
    if file is not None:
        raw = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    else:
        try:
            with hub.store().reading() as conn:
                row = latest_result(conn, str(device_id))
                known = bool(hub.store().devices(conn, [str(device_id)]))
        except StoreError as exc:
            fail(str(exc), code=3)
        if not known:
            fail(f"unknown device {device_id!r}")
        if row is None:
            fail(f"no stored result for {device_id!r}")
        raw = bytes(row["signed"])
    try:
        view = verify_result(raw, hub.keys().public_key)
    except ResultError as exc:
        fail(str(exc))
    emit(hub, view.to_json(), _print_result)


def _print_result(d: dict[str, object]) -> None:
    click.echo(f"signature: verified with the hub key\ndevice: {d['device_id']}\n"
               f"issued: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(float(str(d['issued_at']))))}")
    submods = d["submods"]
    assert isinstance(submods, dict)
    for name, appraisal in submods.items():
        click.echo(f"{name}: {appraisal['status']}  trust vector {json.dumps(appraisal['trust_vector'])}")
    problems = d["problems"]
    click.echo(f"problems: {'; '.join(problems) if isinstance(problems, list) and problems else '-'}")
    click.echo(f"evidence {d['evidence_ref']}  manifest {d['manifest_ref'] or '-'}  policy {d['policy_ref']}  "
               f"action {d['action']}" + (f"  nonce {d['nonce']}" if d.get("nonce") else ""))
