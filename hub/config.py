"""Typed settings, loaded once from a TOML file plus ``ATTEST_HUB_*`` environment variables.

Unknown keys are errors; every value is checked at start. The settings
object is passed down explicitly; nothing reads the environment later.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

ENV_PREFIX = "ATTEST_HUB_"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the setting."""


@dataclass(frozen=True, slots=True)
class Settings:
    state_dir: Path = Path("var")
    database_url: str = ""  # default: sqlite in state_dir
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    broker_tls_ca: str = ""
    broker_tls_cert: str = ""
    broker_tls_key: str = ""
    hub_id: str = "hub"
    session_expiry_s: int = 3600
    operator_keys: tuple[str, ...] = ()
    manufacturer_cas: tuple[str, ...] = ()
    manifests_dir: str = ""
    policies_dir: str = ""
    epoch_period_s: float = 300.0
    batch_max: int = 256
    batch_wait_ms: float = 5.0
    workers: int = 1
    command_ttl_s: int = 7 * 24 * 3600
    max_evidence_bytes: int = 16 * 1024
    device_rate_per_s: float = 20.0
    device_burst: int = 40
    metrics_port: int = 0  # 0: no HTTP endpoint; worker N serves /metrics, /healthz, /readyz on port + N
    metrics_host: str = "127.0.0.1"
    health_port: int = 0
    publish_raw_evidence: bool = False
    # SQLite only: a size limit in pages (PRAGMA max_page_count; 0: none). Reaching it behaves like a
    # full disk: the commit fails, nothing is acknowledged (docs/RELIABILITY.md, tests/faults/).
    sqlite_max_pages: int = 0
    # Quarantine enforced by the broker (hub/broker/enforcement.py, docs/ENFORCEMENT.md):
    # "none" (signed commands only) or "acl-file" (Mosquitto acl_file + SIGHUP).
    broker_enforcement: str = "none"
    broker_acl_file: str = ""
    broker_pid_file: str = ""
    # Send a remediate command naming the newest approved release when quarantining for firmware.
    remediation: bool = False
    # Behavioural anomaly detection (hub/anomaly/watch.py, docs/OBSERVABILITY.md): the leader's pass period
    # (0: off), the score at which a finding opens, and how long a verdict must be visible before a pass reads it.
    anomaly_interval_s: float = 30.0
    anomaly_threshold: float = 1.0
    anomaly_settle_s: float = 2.0
    # HTTP API and web console (hub/server/api/, docs/OPERATIONS.md). ``serve`` serves them with /metrics on
    # metrics_port + N; ``attest-hub api`` alone on api_port. TLS when api_tls_cert is set; client
    # certificates issued by api_client_ca authenticate operators with api_client_cert_scope.
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_tls_cert: str = ""
    api_tls_key: str = ""
    api_client_ca: str = ""
    api_client_cert_scope: str = "read"
    api_max_connections: int = 200  # beyond this the longest-waiting connection without a request is shed
    api_header_timeout_s: float = 10.0  # a request's headers must arrive within this, or the connection closes
    api_keepalive_s: int = 5
    api_page_max: int = 500  # the largest device page a client may ask for

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'hub.db'}"

    @property
    def hub_key_path(self) -> Path:
        return self.state_dir / "hub-signing.key.pem"

    @property
    def nonce_secret_path(self) -> Path:
        return self.state_dir / "nonce-secret.bin"

    def masked(self) -> dict[str, object]:
        """For ``config show``: secrets and credentials in URLs masked."""
        shown = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        url = self.effective_database_url
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            creds, host = rest.rsplit("@", 1)
            user = creds.split(":", 1)[0]
            url = f"{scheme}://{user}:***@{host}"
        shown["database_url"] = url
        if self.broker_tls_key:
            shown["broker_tls_key"] = f"{self.broker_tls_key} (private key path)"
        return shown


_FIELD_TYPES = {f.name: f for f in fields(Settings)}


def _coerce(name: str, value: object) -> object:
    default = getattr(Settings(), name)
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if isinstance(default, Path):
            return Path(str(value))
        if isinstance(default, tuple):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            return tuple(str(v) for v in value)
        if isinstance(default, float):
            number = float(value)  # type: ignore[arg-type]
            if number < 0:
                raise ValueError(value)
            return number
        if isinstance(default, int):
            if isinstance(value, bool):
                raise ValueError(value)
            number = int(value)  # type: ignore[call-overload]
            if number < 0:
                raise ValueError(value)
            return number
        return str(value)
    except (TypeError, ValueError) as exc:
        kind = type(default).__name__
        raise ConfigError(f"{name}: {value!r} is not a valid {kind}") from exc


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """File, then environment, then explicit overrides (CLI options); each value validated."""
    values: dict[str, object] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        section = data.get("hub", data)
        for key, value in section.items():
            if key not in _FIELD_TYPES:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(key, value)
    env = os.environ if environ is None else environ
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX):].lower()
            if name not in _FIELD_TYPES:
                raise ConfigError(f"environment: unknown setting {key}")
            values[name] = _coerce(name, value)
    for key, value in overrides.items():
        if value is not None:
            if key not in _FIELD_TYPES:
                raise ConfigError(f"unknown setting {key!r}")
            values[key] = _coerce(key, value)
    settings = replace(Settings(), **values)  # type: ignore[arg-type]
    if settings.batch_max < 1:
        raise ConfigError("batch_max: must be at least 1")
    if settings.workers < 1:
        raise ConfigError("workers: must be at least 1")
    if settings.broker_enforcement not in ("none", "acl-file"):
        raise ConfigError("broker_enforcement: must be 'none' or 'acl-file'")
    if settings.broker_enforcement == "acl-file" and not (settings.broker_acl_file and settings.broker_pid_file):
        raise ConfigError("broker_enforcement = 'acl-file' needs broker_acl_file and broker_pid_file")
    if settings.epoch_period_s < 1:
        raise ConfigError("epoch_period_s: must be at least 1 second")
    if settings.api_client_cert_scope not in ("read", "operate"):  # HTTP API
        raise ConfigError("api_client_cert_scope: must be 'read' or 'operate'")
    tls = settings.api_tls_cert
    if bool(tls) != bool(settings.api_tls_key) or (settings.api_client_ca and not tls):
        raise ConfigError("api_tls_cert and api_tls_key go together; api_client_ca needs them")
    return settings


__all__ = ["ConfigError", "Settings", "load_settings"]
