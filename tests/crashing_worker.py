"""A worker target for the supervisor tests: notes when it started, then dies at once (importable when spawned)."""

from __future__ import annotations

import time

from hub.config import Settings


def crash(settings: Settings, index: int, verbosity: int) -> None:
    with (settings.state_dir / f"starts-{index}").open("a") as out:
        out.write(f"{time.monotonic()}\n")
    raise SystemExit(3)
