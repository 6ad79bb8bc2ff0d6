"""One hub per state directory, ``db accept-restore`` only when there is a restore to accept, the check under TLS.

``serve`` holds an exclusive lock on ``state_dir/hub.lock`` for its lifetime: a second ``serve`` on the same
state dir is refused (exit 3, the holder's pid named), and so is ``accept-restore`` while a hub serves (exit 1);
the kernel frees the lock when the holder dies, SIGKILL included. ``accept-restore`` on a database that is
behind nothing refuses (exit 1, "nothing to accept"), and on an empty database names the path that works:
``db upgrade`` first. Under mutual TLS the check of the retained checkpoints resumes worker 0's session and
leaves its queued evidence, and its subscriptions, as they were.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub import wire
from hub.appraisal.messages import epoch_message
from hub.broker.process import MosquittoProcess
from hub.cli.main import cli
from hub.config import load_settings
from hub.crypto import pki
from hub.server.announced import Announced, announced, generation_message
from tests.e2e import make_env
from tests.faults.rig import FAST_HUB, HubProcess, wait_until

if TYPE_CHECKING:  # the fixture's type; conftest itself is loaded by pytest, not imported
    from tests.conftest import ProdBroker


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def _holds_lock(hub: HubProcess, state: Path) -> bool:
    assert hub.proc is not None and hub.proc.poll() is None, hub.log_tail()
    lock = state / "hub.lock"
    return lock.exists() and lock.read_text().split()[:1] == [str(hub.proc.pid)]


def _run(hub: HubProcess, *args: str) -> subprocess.CompletedProcess[str]:
    base = hub.command[:hub.command.index("serve")]
    return subprocess.run([*base, *args], env=hub.environ, capture_output=True, text=True, timeout=60)


@pytest.mark.broker
@pytest.mark.slow
def test_a_second_serve_and_accept_restore_are_refused_while_a_hub_serves_and_sigkill_frees_the_lock(
        broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 1, "honest:1", **FAST_HUB)
    state = env.settings.state_dir
    first = HubProcess(env).start()
    assert first.proc is not None
    try:
        wait_until(lambda: _holds_lock(first, state), 20, "the first serve to take the state dir's lock")
        second = _run(first, "serve")
        lines = _error_lines(second.stderr)
        assert second.returncode == 3 and len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"pid {first.proc.pid}" in lines[0] and "serve" in lines[0], lines[0]
        accept = _run(first, "db", "accept-restore")
        lines = _error_lines(accept.stderr)
        assert accept.returncode == 1 and len(lines) == 1, accept.stderr
        assert f"pid {first.proc.pid}" in lines[0], lines[0]
        assert first.proc.poll() is None, "the refused commands left the serving hub alone"
    finally:
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
    third = HubProcess(env).start()
    assert third.proc is not None
    try:
        wait_until(lambda: _holds_lock(third, state), 20, "a new serve after the first was killed")
        wait_until(lambda: "serving with" in third.log_tail(), 20, "the new serve to start its workers")
    finally:
        third.stop()
    # stopped: the lock is free, and a database that is not behind has nothing to accept
    nothing = _run(third, "db", "accept-restore")
    lines = _error_lines(nothing.stderr)
    assert nothing.returncode == 1 and len(lines) == 1, nothing.stderr
    assert lines[0].startswith("error: nothing to accept: the database is not behind"), lines[0]


def _invoke(state: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--state-dir", str(state), "--broker", "127.0.0.1:1", *args])


def test_accept_restore_refuses_when_nothing_is_behind_and_changes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "hub"
    assert _invoke(state, "init").exit_code == 0
    secret = (state / "nonce-secret.bin").read_bytes()
    refused = _invoke(state, "db", "accept-restore")
    assert refused.exit_code == 1, refused.output
    assert "error: nothing to accept: the database is not behind" in refused.output
    assert (state / "nonce-secret.bin").read_bytes() == secret, "nothing rotated"
    assert _invoke(state, "audit", "verify").exit_code == 0


def test_accept_restore_on_an_empty_database_names_db_upgrade_which_then_works(tmp_path: Path) -> None:
    state = tmp_path / "hub"
    assert _invoke(state, "init").exit_code == 0
    (state / "hub.db").write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        Path(f"{state / 'hub.db'}{suffix}").unlink(missing_ok=True)
    refused = _invoke(state, "db", "accept-restore")
    assert refused.exit_code == 3, refused.output
    lines = _error_lines(refused.output)
    assert len(lines) == 1 and "`attest-hub db upgrade` first" in lines[0], refused.output
    assert _invoke(state, "db", "upgrade").exit_code == 0
    accepted = _invoke(state, "db", "accept-restore")
    assert accepted.exit_code == 0, accepted.output
    assert _invoke(state, "device", "list").exit_code == 0


@pytest.mark.broker
def test_the_retained_checkpoints_are_read_under_mutual_tls_without_touching_worker_0s_queued_evidence(
        prod_broker: ProdBroker, tmp_path: Path) -> None:
    """Under mutual TLS the check connects as worker 0's identity (the broker takes the client id from the
    certificate): it resumes that session, reads both retained checkpoints in one connection, acknowledges
    nothing and leaves the session's subscriptions as it found them."""
    ca = prod_broker.ca
    worker = pki.issue_hub_cert(ca, prod_broker.pki_dir, "w1")  # the identity prod_broker's ACL lists
    device = pki.issue_device_cert(ca, prod_broker.pki_dir, "dev-1")
    settings = load_settings(None, environ={}, state_dir=tmp_path / "hub", broker_host=prod_broker.process.host,
                             broker_port=prod_broker.process.port, broker_tls_ca=str(ca.cert_path),
                             broker_tls_cert=str(worker.cert_path), broker_tls_key=str(worker.key_path))
    key = ec.generate_private_key(ec.SECP256R1())
    kid = b"test-hub"

    def connect(cert: pki.IssuedCert, *, clean: bool) -> tuple[mqtt.Client, queue.Queue[mqtt.MQTTMessage]]:
        received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        connected = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
        client.tls_set(ca_certs=str(ca.cert_path), certfile=str(cert.cert_path), keyfile=str(cert.key_path))
        client.on_message = lambda _c, _u, msg: received.put(msg)
        client.on_connect = lambda *_args: connected.set()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        client.connect(prod_broker.process.host, prod_broker.process.port, clean_start=clean, properties=props)
        client.loop_start()
        assert connected.wait(10)
        return client, received

    def close(client: mqtt.Client) -> None:
        client.disconnect()
        client.loop_stop()

    hub, _ = connect(worker, clean=True)  # worker 0's persistent session, subscribed to evidence
    hub.subscribe(f"$share/hub/{wire.FLEET_ROOT}/+/{wire.EVIDENCE}", qos=1)
    nonce = bytes(32)
    for topic, payload in ((wire.EPOCH_TOPIC, epoch_message(7, nonce, int(time.time()), key, kid)),
                           (wire.GENERATION_TOPIC, generation_message(42, 7, int(time.time()), key, kid))):
        hub.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    time.sleep(0.3)
    close(hub)
    dev, _ = connect(device, clean=True)
    dev.publish(wire.device_topic("dev-1", wire.EVIDENCE), b"queued evidence", qos=1).wait_for_publish(10)
    close(dev)

    retained = announced(settings, key.public_key())
    assert retained == Announced(epoch=7, generation=42)
    assert announced(settings, ec.generate_private_key(ec.SECP256R1()).public_key()) == Announced(), \
        "checkpoints signed by another key count for nothing"

    hub, received = connect(worker, clean=False)
    try:
        message = received.get(timeout=10)  # not acknowledged by the checks: the broker sends it again
        assert (message.topic, bytes(message.payload)) == ("fleet/dev-1/evidence", b"queued evidence")
        hub.ack(message.mid, message.qos)
        hub.publish(wire.GENERATION_TOPIC, generation_message(43, 7, int(time.time()), key, kid), qos=1,
                    retain=True).wait_for_publish(10)
        time.sleep(0.7)
        extra = [(m.topic, m.retain, m.dup) for m in list(received.queue)]
        assert not extra, f"the checks left a hub/ subscription or an unacknowledged checkpoint: {extra}"
    finally:
        close(hub)


@pytest.mark.broker
@pytest.mark.slow
def test_workers_end_with_a_killed_supervisor_and_a_new_serve_waits_for_them(
        broker: MosquittoProcess, tmp_path: Path) -> None:
    """Only the supervisor holds the state dir's lock; its spawned workers get SIGTERM when it dies (they
    would otherwise keep processing beside a new serve's workers under the same identities)."""
    env = make_env(broker, tmp_path, 1, "honest:1", **FAST_HUB)
    first = HubProcess(env, workers=2).start()
    assert first.proc is not None
    try:
        wait_until(lambda: len(first.worker_pids()) == 2, 30, "two workers")
        workers = first.worker_pids()
        first.proc.send_signal(signal.SIGKILL)  # the supervisor alone, not its process group
        first.proc.wait()
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in workers),
                   30, "the orphaned workers to end")
    finally:
        os.killpg(first.proc.pid, signal.SIGKILL)
    second = HubProcess(env, workers=2).start()
    try:
        wait_until(lambda: _holds_lock(second, env.settings.state_dir), 20, "a new serve")
        wait_until(lambda: len(second.worker_pids()) == 2, 30, "the new serve's workers")
    finally:
        second.stop()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_a_new_serve_waits_for_earlier_workers_and_names_them(tmp_path: Path) -> None:
    from hub.server.presence import wait_for_earlier_workers, workers_lock_path

    settings = load_settings(None, environ={}, state_dir=tmp_path / "hub")
    settings.state_dir.mkdir(parents=True)
    lock = workers_lock_path(settings)
    holder = subprocess.Popen(
        ["python3", "-c", "import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_SH)\nprint('held', flush=True)\ntime.sleep(60)", str(lock)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception) as refused:
            wait_for_earlier_workers(settings, timeout_s=0.5)
        assert f"pids {holder.pid}" in str(refused.value) and "still running" in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    wait_for_earlier_workers(settings, timeout_s=0.5)  # the kernel freed it with its holder
