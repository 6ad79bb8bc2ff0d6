"""``attest-hub files``: where the files that ship with the hub are (checkout or installed wheel)."""

from __future__ import annotations

import click

from hub.cli.common import fail
from hub.resources import ResourceError, data_path

__all__ = ["files"]

_NAMES = ("broker_config", "firmware_manifests", "dashboard")


@click.command()
@click.argument("name", type=click.Choice(_NAMES))
def files(name: str) -> None:
    """Print the path of shipped files: broker configurations, demo manifests, policies and keys, the dashboard.

    \b
    Examples:
      attest-hub files firmware_manifests      # <class>/manifest.cose, <class>/policy.toml, keys/
      attest-hub files dashboard               # the Grafana dashboard (JSON)
    """
    try:
        click.echo(data_path(name))
    except ResourceError as exc:
        fail(str(exc), code=3)
