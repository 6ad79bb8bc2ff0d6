"""The worker's pacing and its acknowledgement rules, with a stand-in transport (no broker).

Nothing is acknowledged before its batch is committed and every message it publishes has the broker's
PUBACK; a batch waiting for PUBACKs is never decided again, however long the broker takes; evidence the
broker redelivers after the worker committed it is acknowledged without a second decision; quarantines
are committed in a transaction of their own and published before the rest of their batch commits; the
batch size follows the measured cost per evidence.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from helpers import HubEnv, build_env, incoming

from hub import wire
from hub.envelope import Incoming, Outgoing
from hub.server.worker import HubWorker

A, B = "smart-meter-0001", "smart-meter-0002"


@dataclass
class Info:
    message: Outgoing
    done: bool = False


@dataclass
class FakeTransport:
    """What HubWorker uses of MqttTransport; PUBACKs arrive only when the test says so."""

    batches: list[list[Incoming]] = field(default_factory=list)
    sent: list[Info] = field(default_factory=list)
    acked: list[Incoming] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        import queue

        self.inbox: queue.Queue[Incoming] = queue.Queue()

    def next_batch(self, max_items: int, wait_s: float, idle_s: float = 0.2) -> list[Incoming]:
        return self.batches.pop(0)[:max_items] if self.batches else []

    def publish(self, messages: Sequence[Outgoing]) -> list[Info]:
        infos = [Info(m) for m in messages]
        self.sent.extend(infos)
        return infos

    @staticmethod
    def published(infos: Sequence[Info]) -> bool:
        return all(i.done for i in infos)

    def wait_published(self, infos: Sequence[Info], timeout: float) -> bool:
        return self.published(infos)

    def publish_all(self, messages: Sequence[Outgoing], timeout: float = 10.0) -> bool:
        for info in self.publish(messages):
            info.done = True
        return True

    def ack(self, messages: Sequence[Incoming]) -> None:
        self.acked.extend(messages)

    def puback_all(self) -> None:
        for info in self.sent:
            info.done = True


@pytest.fixture
def env(tmp_path: Path) -> Iterator[HubEnv]:
    hub = build_env(tmp_path)
    hub.add_device(A)
    hub.add_device(B)
    try:
        yield hub
    finally:
        hub.close()


def _worker(env: HubEnv, **settings: object) -> tuple[HubWorker, FakeTransport]:
    settings = {"anomaly_interval_s": 0, **settings}
    worker = HubWorker(replace(env.settings, **settings), keys=env.keys)  # type: ignore[arg-type]
    fake = FakeTransport()
    worker.transport = fake  # type: ignore[assignment]
    worker._next_epoch_at = worker._next_watch_at = worker._next_generation_at = float("inf")  # no leader upkeep
    worker._enforcement_synced = True
    return worker, fake


def _verdicts(env: HubEnv, device_id: str) -> int:
    return len(env.verdicts(device_id))


def test_a_batch_is_acknowledged_only_after_every_puback(env: HubEnv) -> None:
    worker, fake = _worker(env)
    batch = [incoming(A, env.evidence(A)), incoming(B, env.evidence(B))]
    fake.batches.append(batch)
    worker.step()
    assert _verdicts(env, A) == 1 and fake.sent and fake.acked == []  # committed, published, not acknowledged
    worker.step()  # nothing new; the broker still has not acknowledged
    assert fake.acked == []
    fake.puback_all()
    worker.step()
    assert fake.acked == batch


def test_a_late_broker_never_makes_a_committed_batch_be_decided_again(env: HubEnv) -> None:
    worker, fake = _worker(env, batches_in_flight=1, ack_wait_s=0.0, ack_wait_per_message_ms=0.0)
    first = replace(incoming(A, env.evidence(A)), token=1)
    fake.batches += [[first], [replace(incoming(B, env.evidence(B)), token=2)]]
    worker.step()
    stop = threading.Event()
    worker._stop = stop
    timer = threading.Timer(0.3, stop.set)  # the worker waits for the broker until stopped, and gives nothing up
    timer.start()
    worker.step()  # a second batch in flight exceeds batches_in_flight: the worker waits for the first
    timer.join()
    assert fake.acked == [] and _verdicts(env, A) == 1 and _verdicts(env, B) == 1
    published_before = len(fake.sent)
    # The broker sends it again (MQTT DUP, same packet id) while its batch still waits for PUBACKs:
    # not decided again, and acknowledged once, by the original batch's acknowledgement.
    same_id = replace(first, redelivered=True)
    fake.batches.append([same_id])
    worker.step()
    assert fake.acked == [] and worker.redelivered == 1
    fake.puback_all()
    worker.step()
    assert [m.token for m in fake.acked].count(first.token) == 1
    # After the batch was acknowledged (that PUBACK lost in a disconnect), a copy is acknowledged itself.
    later = replace(first, redelivered=True, token=99)
    fake.batches.append([later])
    worker.step()
    assert fake.acked[-1] is later and worker.redelivered == 2
    assert _verdicts(env, A) == 1 and len(fake.sent) == published_before  # not decided, nothing re-published


def test_a_device_resend_is_decided_again_and_gets_its_receipt_again(env: HubEnv) -> None:
    worker, fake = _worker(env)
    message = incoming(A, env.evidence(A))
    fake.batches += [[message], [replace(message, token=7)]]  # the device's own re-send: not a redelivery
    worker.step()
    results = len(fake.sent)
    worker.step()
    assert worker.redelivered == 0 and len(fake.sent) == 2 * results  # the stored result, published again
    assert _verdicts(env, A) == 1
    fake.puback_all()
    worker.step()
    assert len(fake.acked) == 2


def test_quarantines_are_published_before_the_rest_of_their_batch(env: HubEnv) -> None:
    worker, fake = _worker(env)
    claims = env.claims(B)
    claims[wire.OEMBOOT] = False
    fake.batches.append([incoming(A, env.evidence(A)), incoming(B, env.evidence(B, claims))])
    worker.step()
    topics = [i.message.topic for i in fake.sent]
    assert topics[:2] == [wire.device_topic(B, wire.RESULT), wire.device_topic(B, wire.COMMAND)]
    assert topics[2] == wire.device_topic(A, wire.RESULT)


def test_the_batch_size_follows_the_measured_cost(env: HubEnv) -> None:
    worker, _fake = _worker(env, batch_budget_ms=20.0, batch_max=256)
    worker._per_evidence_s = 0.0002
    assert worker.batch_limit() == 100
    assert worker.batch_limit(backlog=100) == 100 and worker.batch_limit(backlog=101) == 256  # a backlog: full batches
    worker._per_evidence_s = 0.00001
    assert worker.batch_limit() == 256
    worker._per_evidence_s = 0.1
    assert worker.batch_limit() == 8


def test_a_slow_anomaly_pass_does_not_hold_up_evidence(env: HubEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    from hub.anomaly.watch import PassResult

    worker, fake = _worker(env, anomaly_interval_s=30.0, anomaly_process=False)
    worker._next_watch_at = 0.0  # the leader's pass is due
    release, started = threading.Event(), threading.Event()

    def slow_pass() -> PassResult:
        started.set()
        release.wait(10)
        return PassResult(0, devices_by_status={"trusted": 1})

    monkeypatch.setattr(worker.watch, "run_pass", slow_pass)
    fake.batches.append([incoming(A, env.evidence(A))])
    worker.step()  # starts the pass on its own thread, then decides the batch while the pass is still running
    assert started.wait(5) and not release.is_set()
    assert _verdicts(env, A) == 1
    release.set()
    worker.passes.close(5)
    worker.step()  # the finished pass is applied between batches
    assert 'attest_devices{status="trusted"} 1.0' in _metrics_text(worker)


def test_the_anomaly_pass_runs_in_a_process_of_its_own_and_is_applied_between_batches(env: HubEnv) -> None:
    """The default: the pass runs in a spawned process (no interpreter lock shared with the evidence loop);
    its result comes back through a pipe and is applied by the loop."""
    worker, fake = _worker(env, anomaly_interval_s=30.0)
    assert worker.settings.anomaly_process
    fake.batches.append([incoming(A, env.evidence(A))])
    worker.step()
    assert _verdicts(env, A) == 1
    worker._next_watch_at = 0.0  # the leader's pass is due: it reads the verdict just committed
    worker.step()
    assert worker.passes.busy
    process = worker.passes._process  # type: ignore[union-attr]
    assert process is not None and process.pid != os.getpid()
    deadline = time.monotonic() + 30
    while worker.passes.busy and time.monotonic() < deadline:
        worker.step()  # nothing to decide: the loop polls the pass between (empty) batches
        time.sleep(0.05)
    assert not worker.passes.busy
    text = _metrics_text(worker)
    assert 'attest_devices{status="trusted"} 1.0' in text, text
    assert Path(f"/proc/{process.pid}/comm").read_text().strip() == "anomaly-pass"  # what ps and top show
    worker.passes.close(10)
    assert not process.is_alive()


def test_a_pass_process_whose_leader_stopped_mid_pass_ends_quietly(
        env: HubEnv, capfd: pytest.CaptureFixture[str]) -> None:
    """The leader stops (closes its end of the pipe) while a pass runs: the process has nobody to send its
    result to and ends with exit code 0, without a traceback on the hub's output."""
    worker, _ = _worker(env, anomaly_interval_s=30.0)
    worker.passes.start()  # the process is spawned and asked for a pass
    process = worker.passes._process  # type: ignore[union-attr]
    assert process is not None
    worker.passes.close(30)  # at once: the pass is still to come or under way when the pipe closes
    assert process.exitcode == 0
    assert "Traceback" not in capfd.readouterr().err


def test_a_dead_pass_process_is_reported_and_started_again(env: HubEnv, caplog: pytest.LogCaptureFixture) -> None:
    worker, _fake = _worker(env, anomaly_interval_s=30.0)
    worker.passes.start()
    process = worker.passes._process  # type: ignore[union-attr]
    assert process is not None
    os.kill(process.pid, signal.SIGKILL)  # type: ignore[arg-type]
    process.join(10)
    with caplog.at_level(logging.ERROR):
        assert worker.passes.finished() == []
    assert "anomaly pass process" in caplog.text
    assert not worker.passes.busy
    worker.passes.start()  # the next period: a new process
    assert worker.passes._process is not None and worker.passes._process.pid != process.pid  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    results: list[object] = []
    while not results and time.monotonic() < deadline:
        results = list(worker.passes.finished())
        time.sleep(0.05)
    assert results and results[0].processed >= 0  # type: ignore[attr-defined]
    worker.passes.close(10)


def _metrics_text(worker: HubWorker) -> str:
    from prometheus_client import generate_latest

    return generate_latest(worker.metrics.registry).decode()


def test_a_quarantine_is_committed_and_published_before_the_rest_of_its_batch_commits(env: HubEnv) -> None:
    worker, fake = _worker(env)
    claims = env.claims(B)
    claims[wire.OEMBOOT] = False
    batch = [incoming(A, env.evidence(A)), incoming(B, env.evidence(B, claims))]
    seen: list[tuple[str, int, int]] = []
    publish = fake.publish

    def watching(messages: Sequence[Outgoing]) -> list[Info]:
        seen.extend((m.topic, _verdicts(env, A), _verdicts(env, B)) for m in messages)
        return publish(messages)

    fake.publish = watching  # type: ignore[method-assign]
    fake.batches.append(batch)
    worker.step()
    command = wire.device_topic(B, wire.COMMAND)
    assert (command, 0, 1) in seen, "B's quarantine committed and published while A's verdict was not yet committed"
    assert seen[-1] == (wire.device_topic(A, wire.RESULT), 1, 1)
    assert fake.acked == []  # acknowledged as one batch, after every PUBACK
    fake.puback_all()
    worker.step()
    assert fake.acked == batch


def test_a_retry_after_the_quarantine_committed_does_not_decide_it_again(env: HubEnv,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from hub.store import StoreError

    worker, fake = _worker(env)
    claims = env.claims(B)
    claims[wire.OEMBOOT] = False
    batch = [incoming(A, env.evidence(A)), incoming(B, env.evidence(B, claims))]
    decider = worker.pipeline.decider
    flush = decider.flush
    calls = []

    def failing_once(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 2:  # the rest of the batch, after the quarantine committed
            decider.reset()
            raise StoreError("database is locked")
        flush(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(decider, "flush", failing_once)
    worker._stop.wait = lambda delay: False  # type: ignore[method-assign]  # retry at once
    fake.batches.append(batch)
    worker.step()
    assert _verdicts(env, A) == 1 and _verdicts(env, B) == 1, "one verdict per evidence"
    topics = [i.message.topic for i in fake.sent]
    assert topics.count(wire.device_topic(B, wire.COMMAND)) == 1
    assert topics.count(wire.device_topic(A, wire.RESULT)) == 1
    fake.puback_all()
    worker.step()
    assert fake.acked == batch


def test_a_conflict_after_the_quarantine_committed_decides_only_the_rest_again(env: HubEnv) -> None:
    from hub.appraisal.pipeline import Pipeline

    pipeline: Pipeline = env.pipeline()
    claims = env.claims(B)
    claims[wire.OEMBOOT] = False
    batch = [incoming(A, env.evidence(A)), incoming(B, env.evidence(B, claims))]

    def operator_edits_a(decisions: list[object], messages: list[Incoming]) -> None:
        with env.store.transaction() as conn:  # A's row changes between the two commits
            (device,) = env.store.devices(conn, [A], lock=True).values()
            device.reboots += 1
            env.store.save_devices(conn, [device])

    outcome = pipeline.process(batch, operator_edits_a)
    assert pipeline.conflicts == 1
    assert sorted(d.device_id for d in outcome.decisions) == [A, B]
    assert _verdicts(env, A) == 1 and _verdicts(env, B) == 1
    assert env.device(B).status == "quarantined" and env.device(A).reboots == 1


def _overlapping(env: HubEnv, monkeypatch: pytest.MonkeyPatch) -> tuple[HubWorker, FakeTransport, list[bool]]:
    """A worker with a backlog (so it overlaps), whose commits take 0.3 s; returns, per ``prepare``, whether
    a commit was under way on the commit thread meanwhile."""
    worker, fake = _worker(env)
    fake.inbox.put(incoming(A, b""))  # more is waiting: the worker overlaps commit and verification
    committing = threading.Event()
    during: list[bool] = []
    complete, prepare = worker.pipeline.complete, worker.pipeline.prepare

    def slow_complete(prepared: object, urgent: object = None) -> object:
        committing.set()
        time.sleep(0.3)
        return complete(prepared, urgent)  # type: ignore[arg-type]

    def watched_prepare(batch: list[Incoming]) -> object:
        if worker._committing is not None:
            committing.wait(5)
        during.append(worker._committing is not None and not worker._committing.done())
        return prepare(batch)

    monkeypatch.setattr(worker.pipeline, "complete", slow_complete)
    monkeypatch.setattr(worker.pipeline, "prepare", watched_prepare)
    return worker, fake, during


def test_a_batch_commits_on_the_commit_thread_while_the_next_is_verified(
        env: HubEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    worker, fake, during = _overlapping(env, monkeypatch)
    fake.batches += [[incoming(A, env.evidence(A))], [incoming(B, env.evidence(B))]]
    worker.step()  # batch 1 prepared and handed to the commit thread
    assert worker._committing is not None and _verdicts(env, A) == 0
    worker.step()  # batch 2 verified while batch 1 commits, then committed in turn
    worker._finish_commit()
    assert during == [False, True]
    assert _verdicts(env, A) == 1 and _verdicts(env, B) == 1
    assert [r["status"] for r in env.verdicts(A) + env.verdicts(B)] == ["affirming", "affirming"]
    committer = worker._committer._threads  # type: ignore[attr-defined]
    assert [Path(f"/proc/{os.getpid()}/task/{t.native_id}/comm").read_text().strip() for t in committer] == [
        "commit-w0"], "top -H shows the commit thread by name"
    fake.puback_all()
    worker._settle()
    assert len(fake.acked) == 2, "both batches acknowledged once committed and published"


def test_a_device_in_two_overlapping_batches_is_decided_on_its_state_as_committed(
        env: HubEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch 2 reads device A's row while batch 1 (with A's previous evidence) has not committed yet; it is
    decided on the row batch 1 committed (the worker's cache), not on the stale read: no conflict, no replay."""
    worker, fake, during = _overlapping(env, monkeypatch)
    first, second = env.evidence(A), env.evidence(A)
    fake.batches += [[incoming(A, first)], [incoming(A, second)]]
    worker.step()
    worker.step()
    worker._finish_commit()
    assert during == [False, True]
    assert [r["status"] for r in env.verdicts(A)] == ["affirming", "affirming"], env.verdicts(A)
    assert worker.pipeline.conflicts == 0
