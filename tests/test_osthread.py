"""OS thread names (hub/server/osthread.py): what ``top -H`` and ``/proc/PID/task/TID/comm`` show for the hub's threads.

The unit tests read the kernel's view of a thread's name; the broker test runs a worker against a real
Mosquitto and finds its MQTT network thread by that name.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from device_sim.fleet import Fleet
from hub.broker.process import MosquittoProcess
from hub.server.localhub import LocalHub
from hub.server.osthread import OS_NAME_MAX, name_thread
from tests.e2e import make_env

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")


def _os_name(native_id: int) -> str:
    return Path(f"/proc/{os.getpid()}/task/{native_id}/comm").read_text().strip()


def _os_names() -> set[str]:
    return {_os_name(int(tid)) for tid in os.listdir(f"/proc/{os.getpid()}/task")}


def test_a_thread_names_itself_and_another_names_it_from_outside() -> None:
    seen: list[str] = []
    release = threading.Event()

    def body() -> None:
        assert name_thread("own-name")
        seen.append(_os_name(threading.get_native_id()))
        release.wait(5)

    thread = threading.Thread(target=body)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == ["own-name"]
        assert thread.native_id is not None
        assert name_thread("from-outside", thread)
        assert _os_name(thread.native_id) == "from-outside"
    finally:
        release.set()
        thread.join(5)


def test_a_long_name_is_cut_to_what_the_kernel_keeps_and_an_unstarted_thread_is_left_alone() -> None:
    release = threading.Event()
    thread = threading.Thread(target=release.wait, args=(5,))
    assert not name_thread("never-started", thread)
    thread.start()
    try:
        assert thread.native_id is not None
        assert name_thread("mqtt-a-very-long-client-identifier", thread)
        assert _os_name(thread.native_id) == "mqtt-a-very-long-client-identifier"[:OS_NAME_MAX]
    finally:
        release.set()
        thread.join(5)


@pytest.mark.broker
def test_a_worker_names_its_mqtt_network_thread(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 4, "honest:1", epoch_period_s=3600.0)
    with LocalHub(env.settings, count=1) as hub, \
            Fleet(broker.host, broker.port, env.devices, env.hub_key_pem) as fleet:
        assert env.attest_round(fleet) == len(env.devices)
        client_id = hub.workers[0].transport.address.client_id
        names = _os_names()
    assert f"mqtt-{client_id}"[:OS_NAME_MAX] in names, names  # the commit thread: tests/test_worker_settle.py
