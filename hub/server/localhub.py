"""Run hub workers inside this process (threads): for the demo, the tests and the benchmarks.

Production runs ``attest-hub serve`` (worker processes); this wires the same
``HubWorker`` to a state directory prepared from the repository's signed
manifests and policies.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

from hub.appraisal.operations import Enrolment, enrol
from hub.config import Settings
from hub.crypto.hubkeys import load_hub_keys
from hub.crypto.hubstate import init_hub, open_store
from hub.reference.manifests import verify_manifest
from hub.reference.policy import load_policy
from hub.resources import data_path_or_default
from hub.server.worker import HubWorker

MANIFESTS_DIR = data_path_or_default("firmware_manifests")  # the checkout's folder, or the wheel's package data
DEMO_OPERATOR_KEY = MANIFESTS_DIR / "keys" / "demo-operator.pub.pem"


def prepare_state(settings: Settings, manifests_dir: Path = MANIFESTS_DIR) -> Settings:
    """``attest-hub init`` (keys, schema, generation), then store every signed manifest and policy found under
    ``manifests_dir``."""
    if not settings.operator_keys:
        settings = replace(settings, operator_keys=(str(DEMO_OPERATOR_KEY),))
    init_hub(settings)
    keys = load_hub_keys(settings)
    store = open_store(settings)
    try:
        with store.transaction() as conn:
            for signed in sorted(manifests_dir.glob("*/manifest.cose")):
                manifest = verify_manifest(signed.read_bytes(), keys.operator_keys)
                store.save_manifest(conn, manifest.device_class, manifest.sequence, manifest.signer, manifest.signed)
            for source in sorted(manifests_dir.glob("*/policy.toml")):
                text = source.read_text()
                policy = load_policy(text)
                store.save_policy(conn, policy.device_class, policy.version, text)
    finally:
        store.close()
    return settings


def enrol_all(settings: Settings, entries: list[Enrolment]) -> None:
    store = open_store(settings)
    try:
        enrol(store, entries, actor="setup")
    finally:
        store.close()


class LocalHub:
    """``count`` hub workers on threads; ``start`` returns once each is connected."""

    def __init__(self, settings: Settings, count: int = 1) -> None:
        self.settings = settings
        self.count = count
        self.workers: list[HubWorker] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.errors: list[BaseException] = []

    def start(self) -> LocalHub:
        self._stop.clear()
        self.workers = [HubWorker(self.settings, index) for index in range(self.count)]
        for worker in self.workers:
            thread = threading.Thread(target=self._run, args=(worker,), name=f"hub-w{worker.index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        for worker in self.workers:
            if not worker.transport.connected.wait(10):
                raise RuntimeError(f"hub worker {worker.index} did not connect: {worker.transport.last_error}")
        return self

    def _run(self, worker: HubWorker) -> None:
        try:
            worker.run(self._stop)
        except BaseException as exc:  # surfaced to the test or demo that started us
            self.errors.append(exc)
            raise

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        self._threads = []

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
