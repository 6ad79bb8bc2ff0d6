"""``attest-hub anomalies``: behavioural findings of the detector (hub/anomaly/watch.py), and closing them."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.table import Table

from hub.anomaly.records import acknowledge_set, close_finding, findings
from hub.anomaly.stats import KINDS, RARE
from hub.audit import AuditDraft, append
from hub.cli.common import HubContext, emit, fail, json_option, pass_hub
from hub.cli.output import Column, format_table, json_time
from hub.store import Store, StoreError


def finding_view(row: dict[str, Any]) -> dict[str, Any]:
    """A finding row as the CLI shows it (also used by ``device show``)."""
    return {"id": row["id"], "device_id": row["device_id"], "device_class": row["device_class"], "kind": row["kind"],
            "score": row["score"], "max_score": row["max_score"], "explanation": row["explanation"],
            "first_seen": json_time(row["first_seen"]), "last_seen": json_time(row["last_seen"]),
            "open": bool(row["is_open"]),
            "closed_by": row["closed_by"], "close_reason": row["close_reason"]}


@click.group(invoke_without_command=True)
@click.option("--all", "show_all", is_flag=True, help="Closed findings too (newest first).")
@click.option("--device", "device_id", default=None, help="Only this device.")
@click.option("--kind", type=click.Choice(KINDS), default=None, help="Only this kind of finding.")
@json_option
@click.pass_context
def anomalies(ctx: click.Context, show_all: bool, device_id: str | None, kind: str | None) -> None:
    """Behavioural anomaly findings, each with a score and an explanation (docs/OBSERVABILITY.md).

    \b
    Examples:
      attest-hub anomalies
      attest-hub anomalies --all --device env-sensor-0007
      attest-hub anomalies close 12 --reason "announced rollout of 1.3.0"
    """
    if ctx.invoked_subcommand is not None:
        return
    hub = ctx.find_object(HubContext)
    assert hub is not None
    store = hub.store()
    try:
        with store.reading() as conn:
            rows = findings(conn, open_only=not show_all, device_id=device_id, kind=kind)
    except StoreError as exc:
        fail(str(exc), code=3)
    emit(hub, [finding_view(r) for r in rows], _print)


def _print(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no anomaly findings")
        return
    columns = [Column("id"), Column("device"), Column("kind"), Column("score", drop=2), Column("since", drop=1),
               Column("open", drop=3), Column("explanation", wrap=True, min_width=40)]
    click.echo(format_table(columns, [
        [str(r["id"]), r["device_id"], r["kind"], f"{r['score']:.2f}", r["first_seen"] or "-",
         "yes" if r["open"] else f"closed ({r['closed_by']})", r["explanation"]] for r in rows]), nl=False)


@anomalies.command("close")
@click.argument("finding_id", type=int)
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@json_option
@pass_hub
def close(hub: HubContext, finding_id: int, reason: str) -> None:
    """Close an open finding. It is not raised again for the device until its score has fallen back;
    a rare measurement set is acknowledged for the whole class (e.g. an announced rollout).

    Example: attest-hub anomalies close 12 --reason "announced rollout of 1.3.0"
    """
    if not reason.strip():
        fail("a reason is required")
    store = hub.store()
    now = time.time()
    try:
        with store.transaction() as conn:
            row = close_finding(conn, finding_id, "operator", reason, now)
            if row is None:
                fail(f"no open finding {finding_id}")
            detail = json.loads(row["detail"] or "{}")
            if row["kind"] == RARE and detail.get("fingerprint"):
                acknowledge_set(store, conn, row["device_class"], str(detail["fingerprint"]))
            append(store, conn, [AuditDraft(now, "operator", "anomaly-closed", row["device_id"],
                                            {"finding": finding_id, "kind": row["kind"], "reason": reason})])
    except StoreError as exc:
        fail(str(exc), code=3)
    emit(hub, {"closed": finding_id, "device_id": row["device_id"], "kind": row["kind"]},
         lambda d: click.echo(f"closed finding {d['closed']} ({d['kind']}) of {d['device_id']}"))


def findings_table(database_url: str) -> Table:
    """Open findings as a table (for ``attest-hub demo``)."""
    store = Store(database_url)
    try:
        with store.reading() as conn:
            rows = [finding_view(r) for r in findings(conn)]
    finally:
        store.close()
    table = Table("device", "kind", "score", "explanation", title="Anomaly findings (attest-hub anomalies)")
    for r in rows:
        table.add_row(r["device_id"], r["kind"], f"{r['score']:.2f}", r["explanation"])
    table.caption = f"{len(rows)} open finding(s); docs/OBSERVABILITY.md explains how they are made"
    return table
