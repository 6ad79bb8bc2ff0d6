"""The HTTP API (``/v1``, OpenAPI), the web console and the uvicorn server they run on.

See README.md in this folder. The public names are loaded on first use (PEP 562): the CLI imports the
token store (``hub.server.api.tokens``) for every command, and neither it nor the evidence workers should
pay for importing Litestar and uvicorn (about 0.3 s of CPU and 15 MB per process) unless they serve HTTP.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hub.server.api.app import build_app
    from hub.server.api.context import ApiContext
    from hub.server.api.serve import serve_in_thread, uvicorn_config

__all__ = ["ApiContext", "build_app", "serve_in_thread", "uvicorn_config"]

_HOMES = {"ApiContext": "context", "build_app": "app", "serve_in_thread": "serve", "uvicorn_config": "serve"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
