"""``attest-hub files``: where the files that ship with the hub are (checkout or installed wheel)."""

from __future__ import annotations

import click

from hub.cli.common import HubContext, emit, fail, json_option, pass_hub
from hub.resources import ResourceError, data_path

__all__ = ["files"]

_NAMES = ("broker_config", "firmware_manifests", "dashboard", "deploy")


@click.command()
@click.argument("name", type=click.Choice(_NAMES))
@json_option
@pass_hub
def files(hub: HubContext, name: str) -> None:
    """Print the path of shipped files: broker configurations, demo manifests, policies and keys, the dashboard,
    the deployment files (systemd units, Containerfile, compose, an annotated hub.toml).

    \b
    Examples:
      attest-hub files firmware_manifests      # <class>/manifest.cose, <class>/policy.toml, keys/
      attest-hub files dashboard               # the Grafana dashboard (JSON)
      attest-hub files deploy                  # systemd/, Containerfile, compose.yaml, hub.toml
    """
    try:
        path = data_path(name)
    except ResourceError as exc:
        fail(str(exc), code=3)
    emit(hub, {"name": name, "path": str(path)}, lambda d: click.echo(d["path"]))
