"""Appraisal of evidence (RFC 9334 §3, the Verifier's role): the orchestrator (``pipeline``), verdicts and
their storage rows, status transitions, the hub's outgoing signed messages, challenges, liveness,
remediation, what-if and the operator's operations.

See README.md in this folder for what the package owns and what it may import.
"""

from hub.appraisal.messages import Command, epoch_message
from hub.appraisal.operations import (
    Enrolment,
    OperationError,
    enrol,
    import_manifest,
    import_policy,
    revoke,
    set_quarantine,
)
from hub.appraisal.pipeline import BatchOutcome, Pipeline
from hub.appraisal.ratelimit import RateLimiter
from hub.appraisal.report import FleetReport, build_report
from hub.appraisal.verdicts import DUPLICATE, REJECTED
from hub.appraisal.whatif import Outcome, ProposalError, what_if

__all__ = [
    "DUPLICATE", "REJECTED", "BatchOutcome", "Command", "Enrolment", "FleetReport", "OperationError", "Outcome",
    "Pipeline", "ProposalError", "RateLimiter", "build_report", "enrol", "epoch_message", "import_manifest",
    "import_policy", "revoke", "set_quarantine", "what_if",
]
