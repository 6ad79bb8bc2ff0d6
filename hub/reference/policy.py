"""Appraisal policy per device class, authored as TOML and versioned.

A policy says what evidence a class must send, what configuration it must
report, and what each trust tier leads to. ``load_policy`` explains every
error with the line it is on.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields

ACTIONS = ("affirm", "warn", "quarantine", "require-release")
RELEASE_MODES = ("auto", "operator")
DEBUG_RULES = ("disabled", "any")
ANOMALY_ACTIONS = ("warn", "ignore", "quarantine")


class PolicyError(ValueError):
    """A policy file is invalid; ``line`` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True, slots=True)
class TierActions:
    affirming: str = "affirm"
    warning: str = "warn"
    contraindicated: str = "quarantine"


@dataclass(frozen=True, slots=True)
class Policy:
    device_class: str = "*"
    version: int = 0
    required_evidence: tuple[str, ...] = ("firmware",)
    secure_boot: bool = True
    debug: str = "disabled"
    min_svn: int = 0
    allowed_versions: tuple[str, ...] = ()
    max_evidence_age_s: int = 3600
    attestation_interval_s: int = 300
    allowed_processes: tuple[str, ...] | None = None
    allowed_endpoints: tuple[str, ...] | None = None
    actions: TierActions = field(default_factory=TierActions)
    release: str = "auto"
    data_gap: str = "warning"
    missed: str = "warning"
    """What a missed attestation deadline does: "warning" (status missed-attestation) or "quarantine"."""
    anomaly: str = "warn"
    """What an open behavioural anomaly finding does (hub/anomaly/watch.py): "warn" (status warning),
    "ignore" (recorded and exported only) or "quarantine" (held until an operator releases)."""
    rejected_per_min: int = 30
    """Rejected messages of one device in a minute that open a ``rejection-rate`` finding (0: never;
    hub/anomaly/rejections.py). An honest device sends one message per attestation interval."""
    rejected: str = "warn"
    """What an open ``rejection-rate`` finding does: "warn", "ignore" or "quarantine" (as ``anomaly``).
    Quarantine is meant for brokers with the production ACL, where only the device can publish on its topic."""

    @property
    def ref(self) -> str:
        return f"{self.device_class}@{self.version}"


_TOP_KEYS = {f.name for f in fields(Policy)} - {"actions", "allowed_processes", "allowed_endpoints"}
_SECTIONS = {"actions", "runtime"}


def default_policy(device_class: str) -> Policy:
    return Policy(device_class=device_class)


def load_policy(text: str) -> Policy:
    """Parse and validate a policy file; errors name the line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise PolicyError(f"not valid TOML: {exc}", int(match.group(1)) if match else None) from exc

    def fail(key: str, message: str) -> PolicyError:
        return PolicyError(f"{key}: {message}", _line_of(text, key))

    unknown = set(data) - _TOP_KEYS - _SECTIONS
    if unknown:
        key = sorted(unknown)[0]
        raise fail(key, f"unknown setting (known: {', '.join(sorted(_TOP_KEYS | _SECTIONS))})")
    kwargs: dict[str, object] = {}
    for name in _TOP_KEYS & set(data):
        value = data[name]
        default = getattr(Policy(), name)
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise fail(name, "must be a list of strings")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise fail(name, "must be true or false")
        elif isinstance(default, int):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise fail(name, "must be a non-negative integer")
        elif not isinstance(value, str):
            raise fail(name, "must be a string")
        kwargs[name] = value
    if kwargs.get("debug", "disabled") not in DEBUG_RULES:
        raise fail("debug", f"must be one of {', '.join(DEBUG_RULES)}")
    if kwargs.get("release", "auto") not in RELEASE_MODES:
        raise fail("release", f"must be one of {', '.join(RELEASE_MODES)}")
    if kwargs.get("missed", "warning") not in ("warning", "quarantine"):
        raise fail("missed", "must be 'warning' or 'quarantine'")
    if kwargs.get("anomaly", "warn") not in ANOMALY_ACTIONS:
        raise fail("anomaly", f"must be one of {', '.join(ANOMALY_ACTIONS)}")
    if kwargs.get("rejected", "warn") not in ANOMALY_ACTIONS:
        raise fail("rejected", f"must be one of {', '.join(ANOMALY_ACTIONS)}")
    if kwargs.get("data_gap", "warning") not in ("warning", "contraindicated"):
        raise fail("data_gap", "must be 'warning' or 'contraindicated'")
    unknown_evidence = set(kwargs.get("required_evidence", ())) - {"firmware", "data", "tpm", "psa"}  # type: ignore[call-overload]
    if unknown_evidence:
        raise fail("required_evidence", f"unknown evidence kind {sorted(unknown_evidence)[0]!r}")
    kwargs["actions"] = _actions(data.get("actions", {}), text)
    runtime = data.get("runtime", {})
    if not isinstance(runtime, dict):
        raise fail("runtime", "must be a table")
    for key in runtime:
        if key not in ("allowed_processes", "allowed_endpoints"):
            raise fail(key, "unknown runtime setting (known: allowed_processes, allowed_endpoints)")
        values = runtime[key]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise fail(key, "must be a list of strings")
        kwargs[key] = tuple(values)
    if "device_class" not in kwargs:
        raise PolicyError("device_class: required", 1)
    return Policy(**kwargs)  # type: ignore[arg-type]


def _actions(section: object, text: str) -> TierActions:
    if not isinstance(section, dict):
        raise PolicyError("actions: must be a table", _line_of(text, "actions"))
    known = {f.name for f in fields(TierActions)}
    for key, value in section.items():
        if key not in known:
            raise PolicyError(f"{key}: unknown tier (known: {', '.join(sorted(known))})", _line_of(text, key))
        if value not in ACTIONS:
            raise PolicyError(f"{key}: action must be one of {', '.join(ACTIONS)}", _line_of(text, key))
    return TierActions(**section)


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*(\[\s*{re.escape(key)}\s*\]|{re.escape(key)}\s*=)")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None
