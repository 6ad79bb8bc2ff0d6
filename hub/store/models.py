"""Database tables (SQLModel). Manifests, commands and devices are history (devices are revoked, not
removed); verdicts, audit entries and rejection counts older than ``Settings.retention_days`` are
exported and pruned (hub/appraisal/retention.py)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel


class Device(SQLModel, table=True):
    # HTTP API (hub/server/api/): a filtered device page is read in id order from one index at any fleet size.
    __table_args__ = (
        Index("ix_device_status_id", "status", "device_id"),
        Index("ix_device_class_id", "device_class", "device_id"),
    )
    device_id: str = Field(primary_key=True, max_length=64)
    device_class: str = Field(index=True, max_length=64)
    public_key_pem: str | None = None
    key_version: int = 1
    ueid: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    certificate_pem: str | None = None
    status: str = Field(default="enrolled", index=True, max_length=24)
    tier: int = 0
    trust_vector: str = "{}"
    firmware_version: str | None = None
    last_problems: str = "[]"
    # 64-bit: TPM counters (resetCount << 32 | restartCount, clock) exceed 32 bits.
    bootcount: int = Field(default=-1, sa_column=Column(BigInteger, nullable=False, default=-1))
    seq: int = Field(default=-1, sa_column=Column(BigInteger, nullable=False, default=-1))
    svn_high_water: int = 0
    reboots: int = 0
    last_seen: float | None = None
    last_verdict_at: float | None = None
    enrolled_at: float = 0.0
    revoked: bool = False
    quarantine_hold: bool = False
    command_seq: int = 0
    next_deadline: float | None = Field(default=None, index=True)
    chain_bootcount: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    chain_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    chain_head: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    anomaly_hold: bool = False
    """An open anomaly finding keeps the device at warning (policy ``anomaly = "warn"``, hub/anomaly/watch.py)."""
    seq_window: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    """Anti-replay window (RFC 4303 §3.4.3) of the mark ``(bootcount, seq)``: bit d set once ``seq - d`` was
    judged, little-endian (hub/appraisal/antireplay.py); NULL: every sequence number below the mark counts as
    judged."""


class Verdict(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("device_id", "scheme", "dedup_key", name="uq_verdict_evidence"),
        Index("ix_verdict_device_time", "device_id", "received_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=64)
    scheme: str = Field(max_length=32)
    dedup_key: str = Field(max_length=200)
    received_at: float
    authenticated: bool
    tier: int
    status: str = Field(max_length=24)
    trust_vector: str
    problems: str
    action: str = Field(max_length=32)
    firmware_version: str | None = None
    manifest_ref: str | None = None
    policy_ref: str
    trace_id: str = Field(default="", max_length=64)
    evidence: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    """The evidence as received when it authenticated and is within ``max_evidence_bytes``; else empty
    (hub/appraisal/storage.py::evidence_columns)."""
    evidence_length: int | None = None
    """Bytes received (always set by this release)."""
    evidence_sha256: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    """SHA-256 of the evidence when its bytes were not kept; NULL when ``evidence`` holds them."""


class ManifestRecord(SQLModel, table=True):
    __tablename__ = "manifest"
    __table_args__ = (UniqueConstraint("device_class", "sequence", name="uq_manifest_seq"),)
    id: int | None = Field(default=None, primary_key=True)
    device_class: str = Field(index=True, max_length=64)
    sequence: int
    signer: str
    received_at: float
    signed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class PolicyRecord(SQLModel, table=True):
    __tablename__ = "policy"
    __table_args__ = (UniqueConstraint("device_class", "version", name="uq_policy_version"),)
    id: int | None = Field(default=None, primary_key=True)
    device_class: str = Field(index=True, max_length=64)
    version: int
    source: str
    received_at: float


class CommandRecord(SQLModel, table=True):
    __tablename__ = "command"
    __table_args__ = (Index("ix_command_device_seq", "device_id", "seq"),)
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=64)
    seq: int
    kind: str = Field(max_length=24)
    reason: str
    issued_at: float
    expires_at: float
    signed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class HubState(SQLModel, table=True):
    __tablename__ = "hub_state"
    key: str = Field(primary_key=True, max_length=64)
    value: str


class UsedNonce(SQLModel, table=True):
    __tablename__ = "used_nonce"
    nonce: bytes = Field(sa_column=Column(LargeBinary, primary_key=True))
    device_id: str = Field(max_length=64)
    used_at: float


class AuditEntry(SQLModel, table=True):
    """One entry of the audit log (hub/audit.py): ``id`` orders the whole log, ``seq`` numbers the entries of
    its ``chain`` ('' the hub's chain, else a worker's MQTT client id) from 1."""

    __tablename__ = "audit"
    __table_args__ = (Index("ux_audit_chain_seq", "chain", "seq", unique=True),)
    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(index=True)
    actor: str = Field(max_length=64)
    action: str = Field(max_length=48)
    device_id: str | None = Field(default=None, max_length=64)
    detail: str
    prev_hash: str = Field(max_length=64)
    entry_hash: str = Field(max_length=64)
    chain: str = Field(default="", max_length=64)
    seq: int = 0


class AnomalyFinding(SQLModel, table=True):
    """A behavioural anomaly the leader's detector found (hub/anomaly/watch.py); closed, never deleted."""

    __tablename__ = "anomaly_finding"
    __table_args__ = (Index("ix_anomaly_finding_device", "device_id", "is_open"),)
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=64)
    device_class: str = Field(max_length=64)
    kind: str = Field(max_length=32)
    score: float
    max_score: float
    explanation: str
    detail: str = "{}"
    first_seen: float
    last_seen: float
    is_open: bool = Field(default=True, index=True)
    closed_at: float | None = None
    closed_by: str | None = Field(default=None, max_length=64)
    close_reason: str | None = None


class AnomalyStat(SQLModel, table=True):
    """The detector's streaming state of one device (JSON of hub.anomaly.stats.DeviceStats)."""

    __tablename__ = "anomaly_stat"
    device_id: str = Field(primary_key=True, max_length=64)
    device_class: str = Field(max_length=64)
    updated_at: float
    state: str


class RejectionCount(SQLModel, table=True):
    """Rejected evidence of one enrolled device in one minute: every rejection is counted here, stored
    one by one only up to ``Settings.rejected_rows_per_min`` (hub/appraisal/storage.py)."""

    __tablename__ = "rejection_count"
    device_id: str = Field(primary_key=True, max_length=64)
    minute: int = Field(primary_key=True)
    """Unix time // 60 of the worker's clock."""
    rejected: int = 0
    authenticated: int = 0
    """Of ``rejected``, how many the device had signed (replayed, stale, ...)."""
    bytes_received: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))


# --- HTTP API (hub/server/api/): bearer tokens and each device's latest signed result ---------------------


class ApiToken(SQLModel, table=True):
    """A bearer token of the HTTP API. Only the SHA-256 of its secret is stored (the secret is 32 random
    bytes, so a slow hash adds nothing); revoked tokens stay as history."""

    __tablename__ = "api_token"
    token_id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=64)
    scope: str = Field(max_length=16)
    secret_sha256: str = Field(max_length=64)
    created_at: float
    created_by: str = Field(max_length=64)
    expires_at: float | None = None
    revoked_at: float | None = None


class DeviceResult(SQLModel, table=True):
    """A device's latest retained attestation result, exactly as signed and published (COSE_Sign1 EAR)."""

    __tablename__ = "device_result"
    device_id: str = Field(primary_key=True, max_length=64)
    scheme: str = Field(max_length=32)
    issued_at: float
    signed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
