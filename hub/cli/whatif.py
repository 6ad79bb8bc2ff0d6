"""``attest-hub whatif``: which devices a proposed manifest or policy would move, before it is published."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hub.appraisal.whatif import Outcome, ProposalError, load_proposal, what_if
from hub.cli.common import HubContext, emit, fail, json_option, pass_hub
from hub.cli.output import Column, format_table, stdout_console
from hub.reference.identity import load_anchors
from hub.reference.policy import PolicyError
from hub.reference.values import References
from hub.schemes import default_schemes
from hub.store import StoreError


@click.command()
@click.option("--manifest", "manifest_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Proposed manifest: a signed one (.cose) or its TOML source.")
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Proposed policy (TOML).")
@click.option("--all", "show_all", is_flag=True, help="List every device of the class, not only those that change.")
@click.option("--fail-on-change", is_flag=True, help="Exit 1 if any device would change status (for CI gates).")
@json_option
@pass_hub
def whatif(hub: HubContext, manifest_path: Path | None, policy_path: Path | None, show_all: bool,
           fail_on_change: bool) -> None:
    """Appraise each device's latest evidence against a proposed manifest or policy; change nothing.

    Shows which devices would change status and why. Evidence is re-verified with the enrolled identity and
    re-appraised by its scheme; freshness is not re-checked.

    \b
    Examples:
      attest-hub whatif --manifest env-sensor-2.cose
      attest-hub whatif --policy env-sensor-policy-v2.toml --fail-on-change --json
    """
    if manifest_path is None and policy_path is None:
        raise click.UsageError("give --manifest and/or --policy")
    keys = hub.keys()
    store = hub.store()
    try:
        references = References(keys.operator_keys)
        with store.reading() as conn:
            references.load(store.latest_manifests(conn), store.latest_policies(conn))
        proposal = load_proposal(
            (manifest_path.name, manifest_path.read_bytes()) if manifest_path else None,
            policy_path.read_text() if policy_path else None, references, keys.operator_keys)
        outcomes = what_if(store, references, default_schemes(), proposal,
                           load_anchors(hub.settings.manufacturer_cas))
    except (ProposalError, PolicyError) as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(str(exc), code=3)
    changed = [o for o in outcomes if o.changed]
    data = {"proposal": proposal.label, "device_class": proposal.device_class, "devices": len(outcomes),
            "changes": len(changed), "outcomes": [o.to_json() for o in (outcomes if show_all else changed)]}
    emit(hub, data, lambda d: _print(d, outcomes if show_all else changed))
    if fail_on_change and changed:
        sys.exit(1)


def _print(data: dict[str, object], rows: list[Outcome]) -> None:
    console = stdout_console()
    console.print(f"What if [bold]{data['proposal']}[/] were published: "
                  f"{data['changes']} of {data['devices']} {data['device_class']} device(s) would change status")
    if not rows:
        return
    columns = [Column("device"), Column("now"), Column("would be"), Column("action", drop=1), Column("why", wrap=True)]
    click.echo(format_table(columns, [[o.device_id, o.current_status, o.proposed_status, o.action, o.why]
                                      for o in rows]), nl=False)
