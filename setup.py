"""Packaging beyond what pyproject.toml can say: top-level folders shipped as package data.

``broker_config/``, ``firmware_manifests/``, ``deploy/`` and the Grafana dashboard stay at the
top of the repository (where operators and device makers look for them) and are
mapped into the wheel under ``hub/_data/``; ``hub.resources.data_path`` finds
them in either place. Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

# package name inside the wheel -> folder in the repository
DATA_PACKAGES = {
    "hub._data.broker_config": "broker_config",
    "hub._data.firmware_manifests": "firmware_manifests",
    "hub._data.docs": "docs",
    "hub._data.deploy": "deploy",
}

setup(
    packages=[*find_namespace_packages(include=["hub", "hub.*", "device_sim", "device_sim.*"]), *DATA_PACKAGES],
    package_dir=DATA_PACKAGES,
    package_data={
        "hub": ["py.typed"],
        "device_sim": ["py.typed"],
        "hub.store": ["alembic.ini"],
        "hub.store.migrations": ["script.py.mako"],
        "hub.server.api": ["templates/*.html", "static/*"],
        "hub._data.broker_config": ["*.conf", "acl", "README.md"],
        "hub._data.firmware_manifests": ["*/*.toml", "*/*.cose", "keys/*.pem"],
        "hub._data.docs": ["grafana-dashboard.json"],
        "hub._data.deploy": ["hub.toml", "Containerfile", "compose.yaml", "compose/*", "systemd/*.service",
                             "systemd/*.conf", "systemd/*.d/*.conf"],
    },
)
