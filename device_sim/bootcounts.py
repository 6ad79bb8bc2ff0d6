"""The fleet's boot counters, kept on disk like a device keeps its own across power cycles.

A real device's boot count is a persisted counter that goes up by one per boot (the hub's replay
protection keys on ``(bootcount, seq)``, and its anomaly detector reads how fast the count climbs,
hub/anomaly/stats.py). ``device-sim run`` is one boot of every device it runs: it takes the next count
of each device from ``STATE_DIR/bootcounts-<seed digest>.json`` (a JSON object ``{device id: last boot
count}``, one file per fleet seed, since another seed is another fleet), writes it back before any
evidence leaves (a crash never reuses a count), and records reboots during the run when it ends.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

ENV_STATE_DIR = "DEVICE_SIM_STATE_DIR"


class BootCountError(ValueError):
    """The counter file cannot be read or written, or is not ``{device id: whole number}``; one line."""


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$DEVICE_SIM_STATE_DIR``, else ``$XDG_STATE_HOME/device-sim``, else ``~/.local/state/device-sim``."""
    env = os.environ if environ is None else environ
    if env.get(ENV_STATE_DIR):
        return Path(env[ENV_STATE_DIR])
    base = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else Path.home() / ".local" / "state"
    return base / "device-sim"


def counter_path(state_dir: Path, seed: str) -> Path:
    digest = hashlib.sha256(seed.encode()).hexdigest()[:16]
    return state_dir / f"bootcounts-{digest}.json"


def _read(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BootCountError(f"cannot read boot counters {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BootCountError(f"boot counters {path} are not JSON ({exc}); delete the file to start at 1") from exc
    if not isinstance(data, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                             for v in data.values()):
        raise BootCountError(f"boot counters {path}: expected {{device id: whole number}}; delete the file to "
                             "start at 1")
    return {str(k): v for k, v in data.items()}


def _write(path: Path, counts: Mapping[str, int]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(dict(sorted(counts.items())), indent=1), encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        raise BootCountError(f"cannot write boot counters {path}: {exc.strerror or exc}") from exc


def boot(state_dir: Path, seed: str, device_ids: Iterable[str], forced: int | None = None) -> dict[str, int]:
    """One boot of each device: ``{device id: its boot count}``, already saved.

    The count is the saved one plus 1 (1 for a device never booted here), or ``forced`` for every device
    (``--bootcount``; saved too, so the next run continues from it). BootCountError when the file is
    unusable.
    """
    path = counter_path(state_dir, seed)
    saved = _read(path)
    booted = {d: forced if forced is not None else saved.get(d, 0) + 1 for d in device_ids}
    _write(path, {**saved, **booted})
    return booted


def record(state_dir: Path, seed: str, counts: Mapping[str, int]) -> None:
    """After a run: keep each device's highest boot count (it may have rebooted during the run)."""
    path = counter_path(state_dir, seed)
    saved = _read(path)
    _write(path, {**saved, **{d: max(c, saved.get(d, 0)) for d, c in counts.items()}})


__all__ = ["ENV_STATE_DIR", "BootCountError", "boot", "counter_path", "default_state_dir", "record"]
