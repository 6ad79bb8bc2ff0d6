"""``attest-hub result show``: a device's standing attestation result as a CWT or JWT EAR."""

from __future__ import annotations

from pathlib import Path

import click

from hub import wire
from hub.appraisal.messages import result_from_verdict, sign_result, sign_result_jwt
from hub.cli.common import HubContext, emit, fail, json_option, pass_hub
from hub.schemes import SchemeRegistry, default_schemes
from hub.store import StoreError


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
    except StoreError as exc:
        fail(str(exc), code=3)
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
