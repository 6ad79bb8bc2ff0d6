"""Where the files that ship with the hub are: broker configurations, demo manifests and keys, the dashboard,
the deployment files (systemd units, Containerfile, compose, an annotated hub.toml).

In a source checkout they are the top-level folders ``broker_config/``,
``firmware_manifests/`` and ``docs/``; an installed wheel carries the same
files as package data under ``hub/_data/`` (``setup.py`` maps the folders
there). :func:`data_path` returns whichever exists, package data first.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent

# name -> (path inside hub/_data, path inside a source checkout)
_FILES = {
    "broker_config": ("broker_config", "broker_config"),
    "firmware_manifests": ("firmware_manifests", "firmware_manifests"),
    "dashboard": ("docs/grafana-dashboard.json", "docs/grafana-dashboard.json"),
    "deploy": ("deploy", "deploy"),
}


class ResourceError(LookupError):
    """A shipped file is missing: the installation is incomplete."""


def data_path(name: str) -> Path:
    """Path of the shipped folder or file ``name`` (``broker_config``, ``firmware_manifests``, ``dashboard``,
    ``deploy``).

    Raises :class:`ResourceError` naming both places looked in when neither exists.
    """
    if name not in _FILES:
        raise ResourceError(f"no shipped resource called {name!r}")
    packaged, checkout = _FILES[name]
    candidates = (_PACKAGE / "_data" / packaged, _CHECKOUT / checkout)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    looked = " and ".join(str(c) for c in candidates)
    raise ResourceError(f"{name} not found (looked in {looked}): the installation is incomplete")


def data_path_or_default(name: str) -> Path:
    """Like :func:`data_path`, but the checkout location when nothing exists (for module constants)."""
    try:
        return data_path(name)
    except ResourceError:
        return _CHECKOUT / _FILES[name][1]


__all__ = ["ResourceError", "data_path", "data_path_or_default"]
