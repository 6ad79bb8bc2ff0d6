"""``attest-hub audit`` (verify, export, show) and ``attest-hub report`` (fleet compliance summary)."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from hub.appraisal.report import FleetReport, build_report, format_age, parse_duration
from hub.appraisal.retention import chain_starts
from hub.audit import GENESIS, ChainState, by_chain, verify_export, verify_log
from hub.cli.common import HubContext, emit, fail, json_option, pass_hub
from hub.cli.output import Column, format_table, json_time, stdout_console
from hub.crypto.hubkeys import HubKeyError, load_hub_keys
from hub.crypto.hubstate import read_generation
from hub.crypto.keys import PublicKey
from hub.store import StoreError

EXPORT_FIELDS = ("id", "at", "actor", "action", "device_id", "detail", "chain", "seq", "prev_hash", "entry_hash")
_REQUIRED_FIELDS = ("id", "at", "actor", "action", "device_id", "detail", "prev_hash", "entry_hash")
"""What an exported line must hold: exports from before chains had no chain and seq (one chain, by id)."""


@click.group()
def audit() -> None:
    """The tamper-evident audit log: verify the chain, export a period for auditors, look entries up."""


@audit.command("verify")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Check an exported JSON Lines file instead of the database.")
@json_option
@pass_hub
def verify(hub: HubContext, file: Path | None) -> None:
    """Check that no audit entry was edited, removed or reordered; exit 1 if one was.

    The log is the hub's chain and one chain per worker; every chain is checked and the verdict is one for
    the whole log. In the database it also checks each chain's keyed seal (a chain recomputed after an edit,
    or cut short, no longer matches it), that every worker chain the hub chain opened is still there, and
    that the hub chain's last entry recorded in the state directory is still in it. An exported file is
    checked for its links only (anyone can recompute them; docs/SECURITY.md).

    \b
    Examples:
      attest-hub audit verify
      attest-hub audit verify --file audit-2026Q1.jsonl
    """
    if file is not None:
        rows = [_exported_row(file, number, line)
                for number, line in enumerate(file.read_text().splitlines(), 1) if line.strip()]
        if not rows:  # as the checker in docs/OPERATIONS.md: nothing to vouch for is not an intact chain
            fail(f"{file}: no entries (an export of a period with no audit entries has nothing to verify)",
                 entries=0)
        problems = verify_export(rows)
    else:
        store = hub.store()
        try:
            public_key: PublicKey | None = load_hub_keys(hub.settings).public_key
        except HubKeyError:
            public_key = None  # needed only to check the checkpoint of a prune
        try:
            with store.snapshot() as conn:  # rows, heads and seals as of one moment, however busy the hub
                rows = store.audit_rows(conn)
                recorded_chains = store.audit_chains(conn)
                starts, pruned = chain_starts(store, conn, public_key, rows)  # a signed checkpoint after a prune
            recorded = read_generation(hub.settings)
        except StoreError as exc:
            fail(str(exc), code=3)
        chains = {name: ChainState(*recorded_chains.get(name, (None, None)), *starts.get(name, (0, GENESIS)),
                                   vouched=name in starts) for name in set(recorded_chains) | set(starts)}
        checkpoint = (recorded.audit_id, recorded.audit_head) if recorded is not None else None
        marks = recorded.chain_marks() if recorded is not None else {}
        problems = pruned + verify_log(rows, chains, store.audit_key or b"", checkpoint, marks)
    hub_rows = by_chain(rows).get("", [])
    data = {"intact": not problems, "entries": len(rows), "chains": len(by_chain(rows)), "problems": problems,
            "head": hub_rows[-1]["entry_hash"] if hub_rows else GENESIS}
    emit(hub, data, lambda d: click.echo(
        f"audit chain intact: {d['entries']} entries in {d['chains']} chain{'' if d['chains'] == 1 else 's'}, "
        f"hub chain head {d['head']}"
        if d["intact"] else "audit chain BROKEN:\n  " + "\n  ".join(d["problems"])))
    if problems:
        sys.exit(1)


def _exported_row(file: Path, number: int, line: str) -> dict[str, Any]:
    """One line of an export; a line that is not one ends the command (exit 1) naming the file and line."""
    try:
        entry = json.loads(line)
    except ValueError:
        fail(f"{file} line {number}: not JSON (an export from 'attest-hub audit export' has one JSON object a line)")
    if not isinstance(entry, dict) or set(_REQUIRED_FIELDS) - set(entry):
        fail(f"{file} line {number}: an exported entry needs the fields {', '.join(EXPORT_FIELDS)} (chain and seq "
             "since chains exist)")
    return entry


@audit.command("export")
@click.option("--since", default=None, metavar="DATE", help="First day (YYYY-MM-DD or ISO time, UTC), inclusive.")
@click.option("--until", default=None, metavar="DATE", help="End (YYYY-MM-DD or ISO time, UTC), exclusive.")
@click.option("--quarter", default=None, metavar="YYYYQn",
              help="A calendar quarter (UTC), e.g. 2026Q1; or 'current' / 'previous'.")
@click.option("--out", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path), default=Path("-"),
              show_default=True, help="JSON Lines file to write ('-': standard output).")
@json_option
@pass_hub
def export(hub: HubContext, since: str | None, until: str | None, quarter: str | None, out: Path) -> None:
    """Write the audit entries of a period as JSON Lines, with their hash chain.

    With --json and --out FILE the summary (entries, out, first_prev_hash, last_entry_hash) is a JSON object on
    standard output; errors are JSON objects either way. The period must not end before it starts.

    Each line holds id, at, actor, action, device_id, detail (as hashed), chain, seq, prev_hash and
    entry_hash, so an auditor can recompute every chain without this tool (docs/OPERATIONS.md has a short
    checker). Each chain's first entry's prev_hash is that chain's last entry_hash of the previous period.

    \b
    Example: attest-hub audit export --quarter 2026Q1 --out audit-2026Q1.jsonl
    """
    try:
        start, end = quarter_bounds(quarter, time.time()) if quarter else (None, None)
        start = parse_time(since) if since else start
        end = parse_time(until) if until else end
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if start is not None and end is not None and start >= end:
        fail(f"the period is empty: its start {_utc(start)} is not before its end {_utc(end)} (--since, --until)",
             code=2)
    store = hub.store()
    try:
        with store.snapshot() as conn:
            rows = store.audit_rows(conn, start, end)
    except StoreError as exc:
        fail(str(exc), code=3)
    lines = "".join(json.dumps({k: row[k] for k in EXPORT_FIELDS}, sort_keys=True) + "\n" for row in rows)
    if str(out) == "-":
        click.echo(lines, nl=False)
    else:
        out.write_text(lines)
        first = rows[0]["prev_hash"] if rows else None
        last = rows[-1]["entry_hash"] if rows else None
        summary = {"entries": len(rows), "out": str(out), "first_prev_hash": first, "last_entry_hash": last}
        if hub.as_json:
            emit(hub, summary, lambda _d: None)
        else:
            click.echo(f"wrote {len(rows)} entries to {out}; chain from {first or '-'} to {last or '-'}", err=True)


@audit.command("show")
@click.option("--device", "device_id", default=None, help="Only entries about this device.")
@click.option("--action", default=None, help="Only this action (enrol, verdict, status, quarantine, manifest, ...).")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True, help="The most recent N entries.")
@json_option
@pass_hub
def show(hub: HubContext, device_id: str | None, action: str | None, limit: int) -> None:
    """Recent audit entries, newest last.  Example: attest-hub audit show --device env-sensor-0003"""
    store = hub.store()
    try:
        with store.reading() as conn:
            rows = store.audit_rows(conn)
            known = device_id is None or bool(store.devices(conn, [device_id]))
    except StoreError as exc:
        fail(str(exc), code=3)
    if not known and not any(r["device_id"] == device_id for r in rows):
        fail(f"unknown device {device_id!r}")
    chosen = [r for r in rows if (device_id is None or r["device_id"] == device_id)
              and (action is None or r["action"] == action)][-limit:]
    data = [{"id": r["id"], "at": json_time(r["at"]), "actor": r["actor"], "action": r["action"],
             "device_id": r["device_id"], "detail": json.loads(r["detail"])} for r in chosen]
    emit(hub, data, _print_entries)


def _print_entries(rows: list[dict[str, Any]]) -> None:
    columns = [Column("id"), Column("time (UTC)"), Column("actor", drop=1), Column("action"), Column("device"),
               Column("detail", wrap=True)]
    click.echo(format_table(columns, [[str(r["id"]), r["at"], r["actor"], r["action"], r["device_id"] or "-",
                                       _detail(r["detail"])] for r in rows]), nl=False)


def _detail(detail: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={'; '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in detail.items())


def parse_time(text: str) -> float:
    """``YYYY-MM-DD`` or an ISO 8601 time; without a zone, UTC."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or ISO time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def quarter_bounds(text: str, now: float) -> tuple[float, float]:
    """``2026Q1`` (or ``current`` / ``previous``) to [start, end) in UTC."""
    today = dt.datetime.fromtimestamp(now, dt.UTC)
    current = today.year * 4 + (today.month - 1) // 3
    if text in ("current", "previous"):
        index = current - (text == "previous")
    else:
        match = re.fullmatch(r"(\d{4})-?[Qq]([1-4])", text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not a quarter (YYYYQn, 'current' or 'previous')")
        index = int(match.group(1)) * 4 + int(match.group(2)) - 1

    def start(i: int) -> float:
        return dt.datetime(i // 4, (i % 4) * 3 + 1, 1, tzinfo=dt.UTC).timestamp()

    return start(index), start(index + 1)


def _utc(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@click.command()
@click.option("--silent-after", default="24h", show_default=True, metavar="DURATION",
              help="List devices not seen for longer than this (e.g. 30m, 6h, 2d).")
@json_option
@pass_hub
def report(hub: HubContext, silent_after: str) -> None:
    """Fleet compliance summary: devices per status and class, firmware versions, open quarantines.

    \b
    Examples:
      attest-hub report
      attest-hub report --json > fleet-$(date +%F).json
    """
    try:
        threshold = parse_duration(silent_after)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--silent-after") from exc
    try:
        summary = build_report(hub.store(), silent_after_s=threshold)
    except StoreError as exc:
        fail(str(exc), code=3)
    if hub.as_json:
        data = summary.to_json()
        data["generated_at"] = json_time(summary.generated_at)
        for row, q in zip(data["open_quarantines"], summary.quarantines, strict=True):  # type: ignore[call-overload]
            row["since"] = json_time(q.since)
        emit(hub, data, lambda _d: None)
    else:
        _print_report(summary)


def _print_report(r: FleetReport) -> None:
    console = stdout_console()
    console.print(f"[bold]Fleet compliance report[/] {_utc(r.generated_at)}: {r.total} devices")
    statuses = sorted(r.by_status)
    table = Table("class", *statuses, "total", title="Devices by status")
    for device_class, counts in r.by_class.items():
        table.add_row(device_class, *[str(counts.get(s, 0)) for s in statuses], str(sum(counts.values())))
    table.add_row("[bold]all[/]", *[str(r.by_status[s]) for s in statuses], str(r.total))
    console.print(table)
    firmware = Table("class", "firmware", "devices", title="Firmware in the field")
    for device_class, versions in r.firmware.items():
        for version, count in versions.items():
            firmware.add_row(device_class, version, str(count))
    console.print(firmware)
    if r.quarantines:
        console.print("Open quarantines")
        columns = [Column("device"), Column("class", drop=2), Column("since (UTC)", drop=1), Column("age"),
                   Column("held", drop=3), Column("reason", wrap=True)]
        click.echo(format_table(columns, [
            [q.device_id, q.device_class, _utc(q.since) if q.since else "?", format_age(q.age_s),
             "yes" if q.held_for_operator else "", q.reason] for q in r.quarantines]), nl=False)
    else:
        console.print("Open quarantines: none")
    never = set(r.never_seen)
    silent = _short_list(d for d in r.silent if d not in never)
    console.print(f"Not seen for {format_age(r.silent_after_s)}: {silent or 'none'}")
    if never:
        console.print(f"Never seen (enrolled, no evidence yet): {_short_list(r.never_seen)}")


def _short_list(items: Iterable[str], limit: int = 10) -> str:
    values = list(items)
    return ", ".join(values[:limit]) + (f" (+{len(values) - limit} more)" if len(values) > limit else "")
