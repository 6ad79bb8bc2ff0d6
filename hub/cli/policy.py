"""``attest-hub policy``: validate, show, publish and list the appraisal policy of each device class."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from hub.appraisal.operations import OperationError, import_policy, policy_announcement
from hub.cli.common import HubContext, announce_or_explain, emit, fail, json_option, pass_hub
from hub.cli.output import iso_time
from hub.reference.policy import Policy, PolicyError, default_policy, load_policy
from hub.store import StoreError


@click.group()
def policy() -> None:
    """Appraisal policy, one versioned TOML file per device class (see firmware_manifests/*/policy.toml).

    A policy says which evidence a class must send, the maximum evidence age, secure boot and debug
    requirements, the minimum security version, runtime allow-lists (processes, network endpoints) and what
    each trust tier leads to (affirm, warn, quarantine, require-release).
    """


def policy_json(p: Policy) -> dict[str, Any]:
    data = dataclasses.asdict(p)
    data["ref"] = p.ref
    return data


@policy.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@pass_hub
def validate(hub: HubContext, files: tuple[Path, ...]) -> None:
    """Check policy files; each error names its file and line. Exit 1 if any is invalid.

    Example: attest-hub policy validate firmware_manifests/*/policy.toml
    """
    results = []
    for path in files:
        try:
            parsed = load_policy(path.read_text())
            results.append({"file": str(path), "valid": True, "ref": parsed.ref, "line": None, "error": None})
        except PolicyError as exc:
            message = str(exc).removeprefix(f"line {exc.line}: ")
            results.append({"file": str(path), "valid": False, "ref": None, "line": exc.line, "error": message})
    emit(hub, results, lambda rows: click.echo("\n".join(
        f"{r['file']}: valid ({r['ref']})" if r["valid"]
        else f"{r['file']}:{r['line'] or '?'}: {r['error']}" for r in rows)))
    if not all(r["valid"] for r in results):
        raise SystemExit(1)


@policy.command("show")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--class", "device_class", default=None, help="Show the policy the hub holds for this class.")
@json_option
@pass_hub
def show(hub: HubContext, file: Path | None, device_class: str | None) -> None:
    """Print a policy file, or the one the hub holds for a class (the built-in default if none was published).

    \b
    Examples:
      attest-hub policy show firmware_manifests/env-sensor/policy.toml
      attest-hub policy show --class env-sensor --json
    """
    if (file is None) == (device_class is None):
        raise click.UsageError("give a FILE or --class")
    source = None
    try:
        if file is not None:
            source = file.read_text()
        else:
            store = hub.store()
            with store.reading() as conn:
                source = store.latest_policies(conn).get(str(device_class))
        parsed = load_policy(source) if source is not None else default_policy(str(device_class))
    except PolicyError as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(str(exc), code=3)
    emit(hub, policy_json(parsed),
         lambda d: click.echo(source if source is not None else f"# built-in default policy\n{d}"))


@policy.command("publish")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--no-announce", is_flag=True, help="Only store it (the hub is not running; workers load it at start).")
@json_option
@pass_hub
def publish(hub: HubContext, file: Path, no_announce: bool) -> None:
    """Store a new policy version and announce it to every running worker (no restart needed).

    The version must be higher than the one stored (publishing the very version stored again only re-announces
    it, e.g. after the broker was unreachable). The announcement is retained on hub/policies/{class}, signed
    with the hub's key; workers verify it before adopting it.

    \b
    Example: attest-hub policy publish firmware_manifests/env-sensor/policy.toml
    """
    source = file.read_text()
    try:
        store = hub.store()
        with store.reading() as conn:
            stored = store.latest_policies(conn)
        parsed = load_policy(source)
        if stored.get(parsed.device_class) != source or no_announce:
            parsed = import_policy(store, source)
        # else: this exact version is stored already (an earlier announce failed): announce it again
    except (PolicyError, OperationError) as exc:
        fail(f"{file}: {exc}")
    except StoreError as exc:
        fail(str(exc), code=3)
    broker = None
    if not no_announce:
        broker = announce_or_explain(hub, [policy_announcement(parsed, source, hub.keys())], f"policy {parsed.ref}",
                                     f"attest-hub policy publish {file} (the same version again only announces it)")
    emit(hub, {"published": parsed.ref, "announced": not no_announce, **({"broker": broker} if broker else {})},
         lambda d: click.echo(f"published policy {d['published']}, announced through the broker at {d['broker']}"
                              if d["announced"] else f"stored policy {d['published']}"))


@policy.command("history")
@click.option("--class", "device_class", default=None, help="Only this device class.")
@json_option
@pass_hub
def history(hub: HubContext, device_class: str | None) -> None:
    """Every policy version ever stored (policies, like manifests, are never deleted).

    Example: attest-hub policy history --class env-sensor
    """
    store = hub.store()
    try:
        with store.reading() as conn:
            rows = store.policy_history(conn, device_class)
    except StoreError as exc:
        fail(str(exc), code=3)
    data = [{"device_class": r["device_class"], "version": r["version"], "received_at": r["received_at"]} for r in rows]
    emit(hub, data, lambda d: click.echo("\n".join(
        f"{r['device_class']}@{r['version']}  {iso_time(r['received_at'], hub.local_time)}" for r in d)
        or "no policies"))

