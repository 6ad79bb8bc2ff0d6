"""What a process imports decides its start-up CPU and its resident memory: each evidence worker is a fresh
process (spawn) that imports the CLI's entry module, so the CLI and the worker must not import the HTTP stack
(Litestar, uvicorn, Jinja) unless they serve HTTP."""

from __future__ import annotations

import subprocess
import sys

import pytest

HTTP_STACK = ("litestar", "uvicorn", "jinja2")


def _loaded_after(statement: str) -> set[str]:
    probe = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", ["import hub.cli.main", "import hub.server.worker",
                                       "from hub.server.api.tokens import create_token"])
def test_cli_and_worker_do_not_import_the_http_stack(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert not [name for name in HTTP_STACK if name in loaded]


def test_the_api_names_still_resolve_when_asked_for() -> None:
    loaded = _loaded_after("from hub.server.api import ApiContext, build_app, serve_in_thread, uvicorn_config")
    assert "litestar" in loaded and "uvicorn" in loaded
