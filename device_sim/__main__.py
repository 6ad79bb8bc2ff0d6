"""``python -m device_sim`` is ``device-sim``."""

from __future__ import annotations

from device_sim.cli import main

main()
