"""Typed settings, loaded once from a TOML file plus ``ATTEST_HUB_*`` environment variables.

Unknown keys are errors; every value is checked at start. The settings
object is passed down explicitly; nothing reads the environment later.
"""

from __future__ import annotations

import os
import re
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
    # ``serve`` refuses to start without operator keys (it would trust no manifest and quarantine nothing for
    # firmware) unless this is true; then it warns at start and /healthz says so (hub/server/serve.py).
    allow_no_operator_keys: bool = False
    manufacturer_cas: tuple[str, ...] = ()
    epoch_period_s: float = 300.0
    generation_period_s: float = 60.0
    batch_max: int = 256
    batch_wait_ms: float = 5.0
    workers: int = 1
    command_ttl_s: int = 7 * 24 * 3600
    max_evidence_bytes: int = 16 * 1024
    device_rate_per_s: float = 20.0
    device_burst: int = 40
    metrics_port: int = 0  # 0: no HTTP endpoint; worker N serves /metrics, /healthz, /readyz on port + N
    metrics_host: str = "127.0.0.1"
    # SQLite only: a size limit in pages (PRAGMA max_page_count; 0: none). Reaching it behaves like a
    # full disk: the commit fails, nothing is acknowledged (docs/RELIABILITY.md, tests/faults/).
    sqlite_max_pages: int = 0
    # Quarantine enforced by the broker (hub/broker/enforcement.py, docs/ENFORCEMENT.md):
    # "none" (signed commands only) or "acl-file" (Mosquitto acl_file + SIGHUP).
    broker_enforcement: str = "none"
    broker_acl_file: str = ""
    broker_pid_file: str = ""
    # Enforcement through the broker's control interface, from any host (hub/broker/dynsec.py, httpapi.py):
    # "dynsec" needs nothing more (the hub identity holds the plugin's admin role); "emqx"/"hivemq" call the
    # HTTP API at broker_api_url with HTTP Basic credentials from broker_api_key_file (owner-only, one line
    # "name:secret": an EMQX API key and secret, a HiveMQ REST API user) and the CA file broker_api_ca.
    broker_api_url: str = ""
    broker_api_key_file: str = ""
    broker_api_ca: str = ""
    # Several hosts (docs/SCALING.md): worker 0 of a host leads (epoch, deadline sweep, anomaly pass) only
    # with leader = true: set it on exactly one host. broker_tls_cert/key may hold "{index}", replaced by
    # the worker's index, so each worker of `serve --workers N` has the identity use_username_as_clientid needs.
    leader: bool = True
    # Send a remediate command naming the newest approved release when quarantining for firmware.
    remediation: bool = False
    # Behavioural anomaly detection (hub/anomaly/watch.py, docs/OBSERVABILITY.md): the leader's pass period
    # (0: off), the score at which a finding opens, and how long a verdict must be visible before a pass reads it.
    anomaly_interval_s: float = 30.0
    anomaly_threshold: float = 1.0
    anomaly_settle_s: float = 2.0
    anomaly_process: bool = True
    # Bounded storage (hub/appraisal/storage.py, hub/appraisal/retention.py, docs/RELIABILITY.md): per device and
    # minute, how many rejected messages get a verdict row, keeping at most rejected_bytes_per_min of evidence
    # between them (the rest are only counted); verdicts, audit
    # entries and rejection counts older than retention_days (0: kept forever) are exported to retention_dir
    # (default state_dir/archive) and pruned, by the leader every retention_interval_s and by `db prune`; unknown
    # device ids and messages not appraised (rate limit) are logged, with a sample, once per sampled_log_interval_s.
    rejected_rows_per_min: int = 20
    rejected_bytes_per_min: int = 64 * 1024
    retention_days: float = 0.0
    retention_dir: str = ""
    retention_interval_s: float = 3600.0
    sampled_log_interval_s: float = 60.0
    # Evidence loop pacing (hub/server/worker.py, docs/SCALING.md): a batch is cut so its processing takes
    # about batch_budget_ms (its size follows the measured cost per evidence, at most batch_max); the
    # broker's PUBACKs of a batch's results are awaited ack_wait_s plus ack_wait_per_message_ms for each
    # message before the hub logs that the broker is late (it keeps waiting: never re-processes the batch);
    # at most batches_in_flight committed batches wait for their PUBACKs while the next one is processed.
    batch_budget_ms: float = 20.0
    ack_wait_s: float = 10.0
    ack_wait_per_message_ms: float = 5.0
    batches_in_flight: int = 4
    # Worker memory per active device (docs/SCALING.md "Memory per active device"): device rows a worker keeps
    # as it last committed them (no read before verification), parsed device public keys it keeps, and devices
    # with a rate-limit bucket; each the oldest or idlest dropped first beyond its bound.
    anchor_cache_max: int = 100_000
    key_cache_max: int = 4_096
    rate_limit_devices_max: int = 200_000
    # Anti-replay window (hub/appraisal/antireplay.py, RFC 4303 §3.4.3): per device, the mark and the
    # replay_window - 1 sequence numbers below it; evidence among them not yet judged is judged late.
    replay_window: int = 64
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

    def worker_tls(self, index: int) -> tuple[str, str]:
        """Worker ``index``'s client certificate and key paths: ``{worker}`` in either becomes ``w<index>``,
        ``{index}`` becomes the bare index.

        Mutual TLS makes the certificate CN the MQTT identity, so each worker needs its own certificate.
        """
        name = f"w{index}"
        def fill(path: str) -> str:
            return path.replace("{worker}", name).replace("{index}", str(index))

        return fill(self.broker_tls_cert), fill(self.broker_tls_key)

    @property
    def archive_dir(self) -> Path:
        return Path(self.retention_dir) if self.retention_dir else self.state_dir / "archive"

    @property
    def hub_key_path(self) -> Path:
        return self.state_dir / "hub-signing.key.pem"

    @property
    def nonce_secret_path(self) -> Path:
        return self.state_dir / "nonce-secret.bin"

    # The hub's own state outside the database (hub/crypto/hubstate.py, docs/SECURITY.md): the key that
    # seals the audit chain, and the generation record a restored (rolled-back) database is checked against.
    @property
    def audit_key_path(self) -> Path:
        return self.state_dir / "audit-key.bin"

    @property
    def generation_path(self) -> Path:
        return self.state_dir / "generation.json"

    def masked(self) -> dict[str, object]:
        """For ``config show``: secrets and credentials in URLs masked."""
        shown = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        shown["database_url"] = mask_url_password(self.effective_database_url)
        if self.broker_tls_key:
            shown["broker_tls_key"] = f"{self.broker_tls_key} (private key path)"
        return shown


def mask_url_password(url: str) -> str:
    """``url`` with its password, and only a password, shown as ``***``: the userinfo's (``user:password@``,
    RFC 3986 section 3.2.1, read as SQLAlchemy reads a URL: the password runs to the first ``@``) and a
    ``password=`` query parameter (libpq's); a URL without a password is returned unchanged."""
    url = _USERINFO_PASSWORD.sub(r"\g<head>***@", url, count=1)
    return _QUERY_PASSWORD.sub(r"\g<1>***", url)


_USERINFO_PASSWORD = re.compile(r"^(?P<head>[\w+]+://[^:/@]*:)[^@]+@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


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
        kind = ("true or false" if isinstance(default, bool) else "a list of text values" if isinstance(default, tuple)
                else "a number, 0 or more" if isinstance(default, float)
                else "a whole number, 0 or more" if isinstance(default, int) else "a text value")
        raise ConfigError(f"{name}: {value!r} is not allowed: expected {kind}") from exc


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
        for key, value in data.items():
            if isinstance(value, dict) and key != "hub":
                raise ConfigError(f"{path}: unknown section [{key}] (every setting goes in [hub])")
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
    if settings.broker_enforcement not in ("none", "acl-file", "dynsec", "emqx", "hivemq"):
        raise ConfigError("broker_enforcement: must be 'none', 'acl-file', 'dynsec', 'emqx' or 'hivemq'")
    if settings.broker_enforcement in ("emqx", "hivemq") and not settings.broker_api_url:
        raise ConfigError(f"broker_enforcement = {settings.broker_enforcement!r} needs broker_api_url")
    if settings.batch_budget_ms <= 0 or settings.batches_in_flight < 1:
        raise ConfigError("batch_budget_ms must be positive and batches_in_flight at least 1")
    if settings.broker_enforcement == "acl-file" and not (settings.broker_acl_file and settings.broker_pid_file):
        raise ConfigError("broker_enforcement = 'acl-file' needs broker_acl_file and broker_pid_file")
    if settings.anchor_cache_max < 0 or settings.key_cache_max < 0 or settings.rate_limit_devices_max < 1:
        raise ConfigError("anchor_cache_max and key_cache_max: at least 0; rate_limit_devices_max: at least 1")
    if not 1 <= settings.replay_window <= 4096:
        raise ConfigError("replay_window: must be 1 (no window) to 4096 sequence numbers")
    if settings.epoch_period_s < 1:
        raise ConfigError("epoch_period_s: must be at least 1 second")
    if settings.generation_period_s and settings.generation_period_s < 1:
        raise ConfigError("generation_period_s: must be 0 (off) or at least 1 second")
    if settings.retention_days and settings.retention_interval_s <= 0:
        raise ConfigError("retention_interval_s: must be above 0 when retention_days is set")
    _check_ports(settings)
    if settings.api_client_cert_scope not in ("read", "operate"):  # HTTP API
        raise ConfigError("api_client_cert_scope: must be 'read' or 'operate'")
    tls = settings.api_tls_cert
    if bool(tls) != bool(settings.api_tls_key) or (settings.api_client_ca and not tls):
        raise ConfigError("api_tls_cert and api_tls_key go together; api_client_ca needs them")
    return settings


# --- packaging and operations: port checks and the settings reference (docs/SETTINGS.md) ------------------------

def _check_ports(settings: Settings) -> None:
    """A TCP port is 1-65535; ``metrics_port`` 0 means off, else worker N listens on ``metrics_port + N``."""
    if not 1 <= settings.broker_port <= 65535:
        raise ConfigError(f"broker_port: {settings.broker_port} is not a TCP port (1-65535)")
    if settings.metrics_port and settings.metrics_port + settings.workers - 1 > 65535:
        raise ConfigError(f"metrics_port: {settings.metrics_port} is not a TCP port (1-65535, or 0 for none) for "
                          f"{settings.workers} worker(s): worker N listens on metrics_port + N")


# What each setting means, for docs/SETTINGS.md (`attest-hub config reference`); tests/test_settings_doc.py
# fails when a setting has no entry here or the document is out of date.
SETTING_HELP: dict[str, str] = {
    "state_dir": "Directory of the hub's signing key, nonce secret and (by default) SQLite database; owner-only.",
    "database_url": "SQLAlchemy URL of the store; empty: SQLite file `hub.db` in `state_dir`. PostgreSQL "
                    "(`postgresql://user:password@host/db`) needs the `postgres` extra. Its schema is made by "
                    "`init` and migrated by `db upgrade`, never on start.",
    "broker_host": "MQTT broker host name or address.",
    "broker_port": "MQTT broker TCP port (1-65535).",
    "broker_tls_ca": "Mutual TLS to the broker: the CA certificate (PEM) of the broker's server certificate; "
                     "empty: plain TCP.",
    "broker_tls_cert": "Mutual TLS: the workers' client certificate (PEM; `attest-hub pki hub`); `{worker}` in the "
                       "path becomes `w<N>` (`{index}` the bare N), since each worker needs its own certificate (CN "
                       "`hub-w<N>`).",
    "broker_tls_key": "Mutual TLS: the private key of `broker_tls_cert` (an owner-only file; `{worker}` as there).",
    "hub_id": "Prefix of the workers' MQTT client ids (`<hub_id>-w<N>`) and the CLI's (`<hub_id>-cli`).",
    "session_expiry_s": "MQTT v5 session expiry of each worker's persistent session: how long the broker keeps "
                        "queuing evidence for a worker that is away, in seconds.",
    "operator_keys": "Public keys (PEM files) allowed to sign manifests and policies; comma-separated in the "
                     "environment.",
    "allow_no_operator_keys": "`serve` starts without `operator_keys` (then no manifest or policy is trusted and "
                              "nothing is quarantined for firmware; it warns at start and `/healthz` shows "
                              "`no_operator_keys`); false: it refuses to start (exit 1).",
    "manufacturer_cas": "Manufacturer CA certificates (PEM files) that device certificate chains (x5chain) must "
                        "chain to; comma-separated in the environment.",
    "epoch_period_s": "How often worker 0 publishes a new signed epoch nonce, in seconds (at least 1); evidence "
                      "must carry the current or the previous epoch's nonce.",
    "generation_period_s": "How often worker 0 steps the hub's generation (restore detection), in seconds (0: "
                           "only at start, epoch advances and stop); a database backup taken less than one "
                           "period before a crash is not detected when restored (docs/SECURITY.md).",
    "batch_max": "Most evidence messages a worker appraises and commits in one database transaction.",
    "batch_wait_ms": "How long a worker waits for more messages to fill a batch after the first, in milliseconds.",
    "workers": "Worker processes `serve` starts (each its own MQTT session in the shared subscription).",
    "command_ttl_s": "Lifetime of signed commands (quarantine, release, remediate) in seconds: a device refuses "
                     "a command older than this.",
    "device_rate_per_s": "Per-device evidence rate limit (token bucket refill, messages per second).",
    "device_burst": "Per-device token bucket size: evidence messages accepted in a burst.",
    "metrics_port": "First port of the HTTP endpoint (/metrics, /healthz, /readyz); worker N listens on "
                    "`metrics_port + N`; 0: no endpoint.",
    "metrics_host": "Address the HTTP endpoint binds to.",
    "sqlite_max_pages": "SQLite only: a size limit in pages (PRAGMA max_page_count; 0: none); reaching it behaves "
                        "like a full disk (nothing is acknowledged).",
    "broker_enforcement": "Quarantine enforced at the broker too: `none` (signed commands only), `acl-file` "
                          "(rewrite Mosquitto's acl_file and send it SIGHUP; same host), `dynsec` (Mosquitto's "
                          "dynamic-security plugin over MQTT, any host), `emqx` or `hivemq` (their HTTP APIs).",
    "broker_api_url": "With `emqx` or `hivemq`: the base URL of the broker's HTTP management API.",
    "broker_api_key_file": "With `emqx` or `hivemq`: owner-only file with one line `name:secret` (HTTP Basic "
                           "credentials: an EMQX API key and secret, a HiveMQ REST API user).",
    "broker_api_ca": "With `emqx` or `hivemq`: CA certificate (PEM) of the HTTP API's TLS server; empty: the system's.",
    "leader": "Worker 0 of this host leads (advances the epoch, sweeps liveness deadlines, runs the anomaly pass and "
              "retention); set true on exactly one host.",
    "max_evidence_bytes": "Authenticated evidence up to this many bytes keeps its bytes in its verdict row; larger "
                          "or unauthenticated evidence is stored as SHA-256, length and reason.",
    "rejected_rows_per_min": "Per device and minute, how many rejected messages get a verdict row; the rest are "
                             "only counted (table rejection_count).",
    "rejected_bytes_per_min": "Per device and minute, at most this many bytes of rejected evidence are kept.",
    "retention_days": "Verdicts, audit entries and rejection counts older than this many days are exported and "
                      "pruned (`db prune`, and the leader on a schedule); 0: kept forever.",
    "retention_dir": "Folder of the exported JSON Lines files; empty: `state_dir/archive`. When it is set, or "
                     "`retention_days` is on the leader, `serve` creates it at start and refuses to start (exit 1) "
                     "if it cannot create or write it.",
    "retention_interval_s": "How often the leader prunes, in seconds, when `retention_days` is set.",
    "batch_budget_ms": "While the queue is short, a batch is cut so its processing takes about this many "
                       "milliseconds (its size follows the measured cost per evidence, at most `batch_max`).",
    "ack_wait_s": "How long the broker's PUBACKs of a batch's results are awaited before the hub logs a late "
                  "broker (it keeps waiting: a committed batch is never re-processed), in seconds.",
    "ack_wait_per_message_ms": "Added to `ack_wait_s` for each message a batch publishes, in milliseconds.",
    "batches_in_flight": "At most this many committed batches wait for their PUBACKs while the next is processed.",
    "anchor_cache_max": "Devices whose committed row a worker keeps in memory (about 0.7 KB each; a device outside "
                        "it costs one unlocked read per batch); 0: none.",
    "key_cache_max": "Parsed device public keys a worker keeps (about 2.3 KB each; a key outside it is parsed "
                     "again, about 10 µs per evidence); 0: none.",
    "rate_limit_devices_max": "Most devices a worker keeps a rate-limit bucket for (about 0.2 KB each; only buckets "
                              "not yet refilled are kept); beyond it the least recently seen is forgotten.",
    "replay_window": "Anti-replay window (RFC 4303 §3.4.3) in sequence numbers, 1 to 4096: evidence up to "
                     "`replay_window - 1` below a device's counter mark (same boot), never judged and with a fresh "
                     "nonce, is judged late (its verdict and receipt, no state moved back); 1: none, every counter "
                     "at or below the mark is a replay.",
    "api_host": "`attest-hub api`: the address the HTTP API and console listen on.",
    "api_port": "`attest-hub api`: the TCP port of the HTTP API and console (`serve` uses `metrics_port` + N).",
    "api_tls_cert": "HTTP API over TLS: the server certificate (PEM); empty: plain HTTP.",
    "api_tls_key": "HTTP API over TLS: the server certificate's private key (PEM, owner-only).",
    "api_client_ca": "Operators authenticate with TLS client certificates issued by this CA (PEM); needs "
                     "`api_tls_cert`.",
    "api_client_cert_scope": "Scope of a client certificate from `api_client_ca`: `read` or `operate`.",
    "api_max_connections": "Connection cap of the HTTP server; beyond it the longest-waiting connection without a "
                           "request is shed.",
    "api_header_timeout_s": "A request's headers must arrive within this many seconds, or the connection closes.",
    "api_keepalive_s": "Idle keep-alive connections are closed after this many seconds.",
    "api_page_max": "The largest device page a client may ask for (`limit`).",
    "sampled_log_interval_s": "Unknown device ids and messages not appraised (rate limit) are logged with a sample "
                              "once per this many seconds, never per message.",
    "broker_acl_file": "With `acl-file`: the ACL file the broker reads (the hub rewrites it).",
    "broker_pid_file": "With `acl-file`: the broker's pid file (the hub sends that process SIGHUP).",
    "remediation": "On a firmware quarantine, also send a signed remediate command naming the newest approved "
                   "release.",
    "anomaly_interval_s": "Period of the anomaly detection pass on worker 0, in seconds; 0: off.",
    "anomaly_threshold": "Score at which an anomaly finding opens.",
    "anomaly_settle_s": "How long a verdict must be visible before an anomaly pass reads it, in seconds.",
    "anomaly_process": "Run the leader's anomaly pass in a process of its own, which shares no interpreter lock "
                       "with the evidence loop; false: on a thread of the leader.",
}


_KINDS = {"Path": "path", "str": "string", "int": "integer", "float": "number", "bool": "boolean",
          "tuple[str, ...]": "list of strings"}


def settings_reference() -> str:
    """docs/SETTINGS.md: one Markdown table row per setting (name, type, default, environment variable, meaning).

    Raises ConfigError naming every setting without an entry in ``SETTING_HELP``.
    """
    missing = [f.name for f in fields(Settings) if f.name not in SETTING_HELP]
    if missing:
        raise ConfigError(f"settings without documentation in SETTING_HELP: {', '.join(missing)}")
    defaults = Settings()
    lines = [
        "# Settings",
        "",
        "Generated from `hub/config.py` by `attest-hub config reference` (a test keeps it current). Settings come "
        "from the TOML file given with `--config` (section `[hub]`), then `ATTEST_HUB_*` environment variables, then "
        "command-line options; unknown names are errors. `attest-hub config show` prints the effective values. An "
        "annotated example file: [deploy/hub.toml](../deploy/hub.toml).",
        "",
        "| setting | type | default | environment | meaning |",
        "|---|---|---|---|---|",
    ]
    for f in fields(Settings):
        value = getattr(defaults, f.name)
        kind = _KINDS.get(str(f.type), str(f.type))
        shown = ", ".join(value) if isinstance(value, tuple) else str(value).lower() if isinstance(value, bool) \
            else str(value)
        default = f"`{shown}`" if shown else "(empty)"
        lines.append(f"| `{f.name}` | {kind} | {default} | `{ENV_PREFIX}{f.name.upper()}` | {SETTING_HELP[f.name]} |")
    return "\n".join(lines) + "\n"


__all__ = ["SETTING_HELP", "ConfigError", "Settings", "load_settings", "settings_reference"]
