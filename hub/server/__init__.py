"""The running hub: the worker loop (the one place that does I/O), the supervisor of worker processes,
the HTTP endpoint, Prometheus metrics, logging, and the in-process hub used by the demo and tests.

See README.md in this folder for what the package owns and what it may import.
"""

from hub.server.localhub import LocalHub, enrol_all, prepare_state
from hub.server.logs import configure_logging
from hub.server.supervisor import run_workers
from hub.server.worker import HubWorker

__all__ = ["HubWorker", "LocalHub", "configure_logging", "enrol_all", "prepare_state", "run_workers"]
