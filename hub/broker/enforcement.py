"""Quarantine enforced by the broker: a compromised device ignores the quarantine command.

One small interface, :class:`BrokerEnforcer`, called by the hub after the
verdicts that quarantine or release a device are committed (and by the CLI's
manual quarantine and release), plus ``sync`` at start with the set of
quarantined devices from the database, which is the source of truth.

:class:`AclFileEnforcer` is Mosquitto's: it keeps a managed section at the end
of the ``acl_file`` with one ``user <device id>`` block per quarantined device
that denies everything the ``pattern`` grants except the device's evidence
topic, its command topic and the epoch nonce (its path back to health), then
sends SIGHUP. Measured on Mosquitto 2.0.11 (broker_config/README.md): the
reloaded ACL applies to the next publish of an already-open session, which gets
PUBACK 0x87 under MQTT v5, and the session stays open. It needs the hub on the
broker's host. From any host: ``dynsec.py`` (Mosquitto's dynamic-security plugin
over MQTT), ``emqx.py`` and ``hivemq.py`` (their HTTP APIs), chosen by
``broker_enforcement`` in :func:`enforcer_from_settings`. :class:`NoEnforcement`
is for brokers without any of these (commands only). docs/ENFORCEMENT.md.

Exceptions::

    EnforcementError   the ACL could not be written or the broker not signalled
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from hub import wire
from hub.broker.transport import BrokerAddress, MqttTransport
from hub.config import Settings
from hub.crypto import pki

__all__ = [
    "ACL_SECTION_BEGIN",
    "ACL_SECTION_END",
    "QUARANTINE_DENIED",
    "AclFileEnforcer",
    "BrokerEnforcer",
    "EnforcementError",
    "NoEnforcement",
    "enforcer_from_settings",
    "pid_file_signaller",
    "quarantine_block",
    "validated",
]

log = logging.getLogger(__name__)

ACL_SECTION_BEGIN = "# BEGIN attest-hub quarantine (managed by the hub: edits here are overwritten)"
ACL_SECTION_END = "# END attest-hub quarantine"
QUARANTINE_DENIED = (
    # Everything broker_config/acl grants a device except its path back to health:
    # fleet/%u/evidence (write), fleet/%u/cmd, fleet/%u/result (its receipts) and hub/epoch
    # (read). A test pins this against the template.
    wire.device_topic("{device_id}", wire.DATA),
    wire.MANIFEST_TOPIC_PREFIX + "/#",
)
ENFORCEMENT_MODES = ("none", "acl-file", "dynsec", "emqx", "hivemq")


class EnforcementError(RuntimeError):
    """The broker's access control could not be changed; the database still says what it should be."""


class BrokerEnforcer(Protocol):
    """What the hub asks of a broker. Every method is idempotent and may be called from any worker."""

    @property
    def name(self) -> str: ...

    def quarantine(self, device_id: str) -> None:
        """Cut ``device_id`` off from everything but its evidence and command topics, live sessions included."""

    def release(self, device_id: str) -> None:
        """Give ``device_id`` its ordinary rights back."""

    def revoke(self, device_id: str) -> None:
        """Cut a revoked device off: at least what ``quarantine`` does (its data), more where the broker can."""

    def sync(self, quarantined: Collection[str], revoked: Collection[str] = ()) -> None:
        """Make exactly ``quarantined`` and ``revoked`` the cut-off devices (at start, and after a failure)."""


class NoEnforcement:
    """For a broker without hub-driven access control: the signed commands are all there is."""

    name = "none"

    def quarantine(self, device_id: str) -> None:
        return None

    def release(self, device_id: str) -> None:
        return None

    def revoke(self, device_id: str) -> None:
        return None

    def sync(self, quarantined: Collection[str], revoked: Collection[str] = ()) -> None:
        return None


def validated(device_id: str) -> str:
    """``device_id`` if it may be written into broker access control (``pki.validate_device_id``)."""
    try:
        pki.validate_device_id(device_id)
    except pki.PkiError as exc:
        raise EnforcementError(f"refusing to write broker access control for {device_id!r}: {exc}") from exc
    return device_id


def quarantine_block(device_id: str) -> str:
    """The acl_file lines that quarantine one device; refuses an id that could inject ACL lines."""
    validated(device_id)
    denies = [f"topic deny {topic.format(device_id=device_id)}" for topic in QUARANTINE_DENIED]
    return "\n".join((f"user {device_id}", *denies))


class AclFileEnforcer:
    """Mosquitto ``acl_file`` with a hub-managed quarantine section, reloaded by ``signal_broker``.

    Changes are made under an exclusive ``flock`` on ``<acl_file>.lock`` (read,
    modify, write a temporary file, rename, signal), so several hub workers on
    one host never lose each other's entries. The section is always the last
    thing in the file: a ``user`` line would otherwise capture the lines after it.
    """

    name = "acl-file"

    def __init__(self, acl_path: Path, signal_broker: Callable[[], None]) -> None:
        self.acl_path = acl_path
        self._signal = signal_broker

    def quarantine(self, device_id: str) -> None:
        quarantine_block(device_id)  # validate before taking the lock
        self._change(lambda ids: ids | {device_id}, always_signal=False)

    def release(self, device_id: str) -> None:
        quarantine_block(device_id)
        self._change(lambda ids: ids - {device_id}, always_signal=False)

    def revoke(self, device_id: str) -> None:
        """The acl_file has one cut-off block: a revoked device loses what a quarantined one does."""
        self.quarantine(device_id)

    def sync(self, quarantined: Collection[str], revoked: Collection[str] = ()) -> None:
        wanted = frozenset(quarantined) | frozenset(revoked)
        for device_id in wanted:
            quarantine_block(device_id)
        # Always signal: a crash between writing and signalling must not leave the broker behind.
        self._change(lambda _ids: set(wanted), always_signal=True)

    def quarantined(self) -> frozenset[str]:
        """The device ids the file currently quarantines."""
        _, ids = split_acl(self._read())
        return frozenset(ids)

    def _change(self, update: Callable[[set[str]], set[str]], *, always_signal: bool) -> None:
        with self._locked():
            base, current = split_acl(self._read())
            wanted = update(set(current))
            changed = wanted != set(current)
            if changed:
                self._write(render_acl_with_quarantine(base, wanted))
            if changed or always_signal:
                self._signal()
        if changed:
            log.info("broker ACL now quarantines %d device(s)", len(wanted))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.acl_path.with_name(self.acl_path.name + ".lock")
        try:
            handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise EnforcementError(f"cannot open the ACL lock {lock_path}: {exc.strerror}") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)  # closing releases the lock

    def _read(self) -> str:
        try:
            return self.acl_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise EnforcementError(f"cannot read the broker ACL {self.acl_path}: {exc.strerror}") from exc

    def _write(self, text: str) -> None:
        directory = self.acl_path.parent
        try:
            mode = self.acl_path.stat().st_mode & 0o777
            fd, tmp = tempfile.mkstemp(prefix=".acl-", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    out.write(text)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(tmp, mode)
                os.replace(tmp, self.acl_path)
            except OSError:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise EnforcementError(f"cannot write the broker ACL {self.acl_path}: {exc.strerror}") from exc


def split_acl(text: str) -> tuple[str, list[str]]:
    """(the file without the managed section, the device ids the section quarantines)."""
    lines = text.splitlines()
    if ACL_SECTION_BEGIN not in lines:
        return text.rstrip("\n") + "\n", []
    start = lines.index(ACL_SECTION_BEGIN)
    end = lines.index(ACL_SECTION_END, start) if ACL_SECTION_END in lines[start:] else len(lines)
    section = lines[start + 1:end]
    ids = [line.split(None, 1)[1].strip() for line in section if line.startswith("user ")]
    base = "\n".join(lines[:start] + lines[end + 1:]).rstrip("\n") + "\n"
    return base, ids


def render_acl_with_quarantine(base: str, quarantined: Collection[str]) -> str:
    """``base`` followed by the managed section (sorted, so the file does not churn)."""
    blocks = [quarantine_block(device_id) for device_id in sorted(quarantined)]
    section = "\n\n".join(blocks)
    return f"{base.rstrip(chr(10))}\n\n{ACL_SECTION_BEGIN}\n{section}\n{ACL_SECTION_END}\n"


def pid_file_signaller(pid_file: Path) -> Callable[[], None]:
    """SIGHUP the process whose id is in ``pid_file`` (Mosquitto re-reads its acl_file on SIGHUP)."""

    def send() -> None:
        try:
            pid = int(pid_file.read_text(encoding="ascii").strip())
        except (OSError, ValueError) as exc:
            raise EnforcementError(f"cannot read the broker pid from {pid_file}: {exc}") from exc
        if pid <= 1:
            raise EnforcementError(f"{pid_file} holds an implausible pid {pid}")
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            raise EnforcementError(f"cannot signal the broker (pid {pid}): {exc.strerror}") from exc

    return send


def enforcer_from_settings(settings: Settings, transport: MqttTransport | None = None) -> BrokerEnforcer:
    """``broker_enforcement``: ``none`` (default), ``acl-file`` (needs broker_acl_file and broker_pid_file),
    ``dynsec`` (Mosquitto's dynamic-security plugin over MQTT: through ``transport``, a hub worker's own
    connection, built before it starts; without one, a connection per call with the settings' identity),
    ``emqx`` or ``hivemq`` (their HTTP APIs at broker_api_url; hub/broker/httpapi.py)."""
    mode = settings.broker_enforcement
    if mode == "dynsec":
        from hub.broker import dynsec  # the backends import this module's interface

        if transport is not None:
            return dynsec.DynsecEnforcer(dynsec.TransportExecutor(transport))
        address = BrokerAddress(settings.broker_host, settings.broker_port, f"{settings.hub_id}-cli",
                                session_expiry_s=0, tls_ca=settings.broker_tls_ca,
                                tls_cert=settings.broker_tls_cert, tls_key=settings.broker_tls_key)
        return dynsec.DynsecEnforcer(dynsec.ConnectionExecutor(address))
    if mode in ("emqx", "hivemq"):
        from hub.broker import emqx, hivemq, httpapi

        if not settings.broker_api_url:
            raise EnforcementError(f"broker_enforcement = {mode!r} needs broker_api_url")
        credentials = httpapi.read_credentials(Path(settings.broker_api_key_file)) \
            if settings.broker_api_key_file else None
        api = httpapi.HttpApi(settings.broker_api_url, credentials, settings.broker_api_ca)
        return emqx.EmqxEnforcer(api) if mode == "emqx" else hivemq.HivemqEnforcer(api)
    if mode == "none":
        return NoEnforcement()
    if mode == "acl-file":
        if not settings.broker_acl_file or not settings.broker_pid_file:
            raise EnforcementError("broker_enforcement = 'acl-file' needs broker_acl_file and broker_pid_file")
        return AclFileEnforcer(Path(settings.broker_acl_file), pid_file_signaller(Path(settings.broker_pid_file)))
    raise EnforcementError(f"broker_enforcement: {mode!r} is not one of {', '.join(ENFORCEMENT_MODES)}")
