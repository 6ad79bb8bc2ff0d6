"""The HTTP API (``/v1``, OpenAPI), the web console and the uvicorn server they run on.

See README.md in this folder.
"""

from hub.server.api.app import build_app
from hub.server.api.context import ApiContext
from hub.server.api.serve import serve_in_thread, uvicorn_config

__all__ = ["ApiContext", "build_app", "serve_in_thread", "uvicorn_config"]
