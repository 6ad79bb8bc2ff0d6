"""hub.broker.enforcement without a broker: the managed ACL section, injection refusal, signalling, settings,
and the hub worker's enforcement path (after commit; full sync at start and after a failure)."""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path

import pytest

from hub import wire
from hub.appraisal.pipeline import BatchOutcome
from hub.appraisal.verdicts import Decision
from hub.broker.enforcement import (
    ACL_SECTION_BEGIN,
    ACL_SECTION_END,
    QUARANTINE_DENIED,
    AclFileEnforcer,
    EnforcementError,
    NoEnforcement,
    enforcer_from_settings,
    pid_file_signaller,
)
from hub.broker.process import BROKER_CONFIG_DIR, render_acl
from hub.config import ConfigError, load_settings
from hub.reference.trust import Tier, TrustVector


class Signals:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
def acl(tmp_path: Path) -> Path:
    path = tmp_path / "acl"
    path.write_text(render_acl(["w1"]), encoding="utf-8")
    path.chmod(0o640)
    return path


def test_quarantine_adds_a_deny_block_after_everything_and_release_removes_it(acl: Path) -> None:
    base = acl.read_text()
    signals = Signals()
    enforcer = AclFileEnforcer(acl, signals)
    enforcer.quarantine("dev-2")
    enforcer.quarantine("dev-1")
    text = acl.read_text()
    assert text.startswith(base.rstrip("\n")) and text.rstrip("\n").endswith(ACL_SECTION_END)
    section = text[text.index(ACL_SECTION_BEGIN):]
    assert section.index("user dev-1") < section.index("user dev-2")  # sorted: the file does not churn
    assert "topic deny fleet/dev-1/data" in section and "topic deny hub/manifests/#" in section
    assert "fleet/dev-1/evidence" not in section and "fleet/dev-1/cmd" not in section
    assert enforcer.quarantined() == {"dev-1", "dev-2"} and signals.count == 2
    assert acl.stat().st_mode & 0o777 == 0o640
    enforcer.release("dev-1")
    enforcer.release("dev-2")
    assert acl.read_text().split(ACL_SECTION_BEGIN)[0].rstrip("\n") == base.rstrip("\n")
    assert enforcer.quarantined() == set() and signals.count == 4


def test_repeated_quarantine_neither_rewrites_nor_signals(acl: Path) -> None:
    signals = Signals()
    enforcer = AclFileEnforcer(acl, signals)
    enforcer.quarantine("dev-1")
    before = (acl.read_text(), acl.stat().st_ino)
    enforcer.quarantine("dev-1")
    enforcer.release("dev-9")
    assert (acl.read_text(), acl.stat().st_ino) == before and signals.count == 1


def test_sync_sets_exactly_the_given_devices_and_always_signals(acl: Path) -> None:
    signals = Signals()
    enforcer = AclFileEnforcer(acl, signals)
    enforcer.quarantine("dev-1")
    enforcer.sync(["dev-2", "dev-3"])
    assert enforcer.quarantined() == {"dev-2", "dev-3"}
    enforcer.sync(["dev-2", "dev-3"])  # unchanged, yet signalled: a crash may have come before the last SIGHUP
    assert signals.count == 3


def test_section_found_before_later_lines_is_moved_back_to_the_end(acl: Path) -> None:
    enforcer = AclFileEnforcer(acl, Signals())
    enforcer.quarantine("dev-1")
    acl.write_text(acl.read_text() + "\nuser hub-w2\ntopic read fleet/+/evidence\n")
    enforcer.quarantine("dev-2")
    text = acl.read_text()
    assert text.index("user hub-w2") < text.index(ACL_SECTION_BEGIN)
    assert text.rstrip("\n").endswith(ACL_SECTION_END) and enforcer.quarantined() == {"dev-1", "dev-2"}


@pytest.mark.parametrize("device_id", ["dev-1\nuser hub-w1", "dev-1\ttopic", "+", "#", "fleet/x", "$SYS", "hub-w1",
                                       "a b", ""])
def test_ids_that_could_inject_acl_lines_are_refused_and_nothing_is_written(acl: Path, device_id: str) -> None:
    before = acl.read_text()
    signals = Signals()
    enforcer = AclFileEnforcer(acl, signals)
    for call in (enforcer.quarantine, enforcer.release, lambda d: enforcer.sync(["ok-1", d])):
        with pytest.raises(EnforcementError):
            call(device_id)
    assert acl.read_text() == before and signals.count == 0


def test_quarantine_denies_every_device_grant_of_the_acl_template_but_the_path_back_to_health() -> None:
    template = (BROKER_CONFIG_DIR / "acl").read_text()
    grants = re.findall(r"^pattern (read|write|readwrite) (\S+)$", template, re.MULTILINE)
    kept = {wire.device_topic("%u", wire.EVIDENCE), wire.device_topic("%u", wire.COMMAND),
            wire.device_topic("%u", wire.RESULT), wire.EPOCH_TOPIC}  # a quarantined device still attests
    to_deny = {topic.replace("%u", "{device_id}") for _, topic in grants if topic not in kept}
    assert to_deny and to_deny == set(QUARANTINE_DENIED)


def test_unreadable_acl_and_failed_signal_raise_enforcement_error(tmp_path: Path, acl: Path) -> None:
    with pytest.raises(EnforcementError, match="cannot read"):
        AclFileEnforcer(tmp_path / "missing", Signals()).quarantine("dev-1")

    def broken() -> None:
        raise EnforcementError("broker gone")

    with pytest.raises(EnforcementError, match="broker gone"):
        AclFileEnforcer(acl, broken).quarantine("dev-1")


def test_pid_file_signaller_refuses_missing_garbage_and_implausible_pids(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(EnforcementError, match="cannot read"):
        pid_file_signaller(pid_file)()
    for text in ("abc", "1", "0", "-5"):
        pid_file.write_text(text)
        with pytest.raises(EnforcementError):
            pid_file_signaller(pid_file)()


def test_pid_file_signaller_sends_sighup(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    script = ("import signal,sys,time\n"
              "signal.signal(signal.SIGHUP, lambda *a: sys.exit(7))\n"
              "print('ready', flush=True)\ntime.sleep(30)")
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            (tmp_path / "pid").write_text(str(child.pid))
            pid_file_signaller(tmp_path / "pid")()
            assert child.wait(10) == 7
        finally:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)


def test_settings_choose_the_enforcer_and_refuse_incomplete_acl_file_settings(tmp_path: Path) -> None:
    assert isinstance(enforcer_from_settings(load_settings(None, environ={})), NoEnforcement)
    with pytest.raises(ConfigError):
        load_settings(None, environ={}, broker_enforcement="acl-file")
    with pytest.raises(ConfigError):
        load_settings(None, environ={}, broker_enforcement="mosquitto-magic")
    for needs_url in ("emqx", "hivemq"):
        with pytest.raises(ConfigError, match="broker_api_url"):
            load_settings(None, environ={}, broker_enforcement=needs_url)
    settings = load_settings(None, environ={}, broker_enforcement="acl-file",
                             broker_acl_file=str(tmp_path / "acl"), broker_pid_file=str(tmp_path / "pid"))
    assert isinstance(enforcer_from_settings(settings), AclFileEnforcer)


class Recorder:
    name = "recorder"

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, object]] = []
        self.fail = fail

    def quarantine(self, device_id: str) -> None:
        self._call("quarantine", device_id)

    def release(self, device_id: str) -> None:
        self._call("release", device_id)

    def revoke(self, device_id: str) -> None:
        self._call("revoke", device_id)

    def sync(self, quarantined: Collection[str], revoked: Collection[str] = ()) -> None:
        self._call("sync", sorted(quarantined) + sorted(revoked))

    def _call(self, what: str, arg: object) -> None:
        self.calls.append((what, arg))
        if self.fail:
            raise EnforcementError("broker unreachable")


def _decision(device_id: str, action: str) -> Decision:
    return Decision(device_id, "firmware", "x", True, Tier.AFFIRMING, TrustVector(), (), action, "t")


def test_worker_enforces_committed_quarantines_and_releases_and_resyncs_after_a_failure(tmp_path: Path) -> None:
    from hub.server.localhub import prepare_state
    from hub.server.worker import HubWorker

    settings = prepare_state(load_settings(None, environ={}, state_dir=tmp_path / "hub"))
    recorder = Recorder()
    worker = HubWorker(settings, enforcer=recorder)
    try:
        outcome = BatchOutcome()
        outcome.decisions.extend([_decision("a", "quarantine"), _decision("b", "release"),
                                  _decision("c", "already-quarantined"), _decision("d", "affirm")])
        worker._enforce(outcome)
        assert recorder.calls == [("quarantine", "a"), ("release", "b")]
        recorder.fail = True
        worker._enforcement_synced = True
        worker._enforce(outcome)
        assert not worker._enforcement_synced and "unreachable" in worker.health.last_error
        recorder.fail = False
        worker._sync_enforcement()
        assert worker._enforcement_synced and recorder.calls[-1] == ("sync", [])
    finally:
        worker.store.close()
