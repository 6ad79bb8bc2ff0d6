"""What a live session sees when the hub changes a device's rights through Mosquitto's dynamic-security plugin.

A device publishes on ``fleet/{id}/data`` back to back (QoS 1, MQTT v5, mutual TLS) while the hub's enforcer
(``DynsecEnforcer`` over its own hub identity) quarantines and releases it. Per round it records whether the
session was disconnected (and the reason code), the time from the call to the first denied publish (0x87) or,
after a release, to the first accepted one, and how many publishes were accepted in between.

    python -m bench.enforcement_latency --rounds 10

Two cases differ on Mosquitto 2.0.11: a device the plugin does not know yet is created with its role, which
applies to the open session; a device it knows gets a role change, which disconnects it (0x98) and the new
rights apply once paho reconnects (its first back-off is ``--reconnect-delay`` seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from hub.broker.dynsec import ConnectionExecutor, DynsecEnforcer, initial_config
from hub.broker.process import MosquittoProcess, find_dynsec_plugin, render_acl
from hub.broker.transport import BrokerAddress
from hub.crypto import pki

NOT_AUTHORIZED = 0x87


class Device:
    """A device session publishing data back to back and logging every PUBACK and disconnect."""

    def __init__(self, broker: MosquittoProcess, ca: pki.CertificateAuthority, cert: pki.IssuedCert,
                 reconnect_delay: int) -> None:
        self.topic = f"fleet/{cert.common_name}/data"
        self.acks: list[tuple[float, int]] = []
        self.disconnects: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cert.common_name, protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(ca.cert_path), certfile=str(cert.cert_path), keyfile=str(cert.key_path))
        self.client.reconnect_delay_set(reconnect_delay, 30)
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_publish(self, _c: Any, _u: Any, _mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._lock:
            self.acks.append((time.monotonic(), rc.value))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        with self._lock:
            self.disconnects.append((time.monotonic(), rc.value))

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.client.is_connected():
                info = self.client.publish(self.topic, b"x", qos=1)
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(2)
            else:
                time.sleep(0.005)

    def first_after(self, t0: float, denied: bool) -> tuple[float | None, int]:
        """(ms from t0 to the first PUBACK that is denied/accepted, PUBACKs of the other kind before it)."""
        with self._lock:
            acks = [(t, rc) for t, rc in self.acks if t >= t0]
        for count, (t, rc) in enumerate(acks):
            if (rc == NOT_AUTHORIZED) == denied:
                return (t - t0) * 1000, count
        return None, len(acks)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.disconnect()
        self.client.loop_stop()


def _wait(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def measure(rounds: int, reconnect_delay: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dynsec-bench-") as tmp:
        work = Path(tmp)
        ca = pki.create_ca(work / "pki", "Bench CA")
        server = pki.issue_server_cert(ca, work / "pki")
        hub = pki.issue_hub_cert(ca, work / "pki", "bench")
        (work / "acl").write_text(render_acl(["bench"]), encoding="utf-8")
        (work / "dynsec.json").write_text(json.dumps(initial_config([hub.common_name])), encoding="utf-8")
        values = {"cafile": str(ca.cert_path), "certfile": str(server.cert_path), "keyfile": str(server.key_path),
                  "acl_file": str(work / "acl"), "dynsec_plugin": find_dynsec_plugin(),
                  "dynsec_file": str(work / "dynsec.json")}
        rows: list[dict[str, Any]] = []
        with MosquittoProcess("prod-dynsec.conf", work / "broker", values=values) as broker:
            address = BrokerAddress(broker.host, broker.port, hub.common_name, session_expiry_s=0,
                                    tls_ca=str(ca.cert_path), tls_cert=str(hub.cert_path), tls_key=str(hub.key_path))
            enforcer = DynsecEnforcer(ConnectionExecutor(address))
            for index in range(rounds):
                cert = pki.issue_device_cert(ca, work / "pki", f"bench-dev-{index:04d}")
                device = Device(broker, ca, cert, reconnect_delay)
                try:
                    _measure_device(device, enforcer, cert.common_name, rows)
                finally:
                    device.close()
    return {"reconnect_delay_s": reconnect_delay, "steps": _summary(rows)}


def _measure_device(device: Device, enforcer: DynsecEnforcer, device_id: str, rows: list[dict[str, Any]]) -> None:
    _wait(lambda: len(device.acks) > 20)
    steps = (("first quarantine (client created)", enforcer.quarantine, True),
             ("release (role change)", enforcer.release, False),
             ("quarantine again (role change)", enforcer.quarantine, True))
    for step, call, denied in steps:
        kicks = len(device.disconnects)
        t0 = time.monotonic()
        call(device_id)
        call_ms = (time.monotonic() - t0) * 1000
        _wait(lambda t0=t0, denied=denied: device.first_after(t0, denied)[0] is not None)  # type: ignore[misc]
        ms, other = device.first_after(t0, denied)
        rows.append({"step": step, "call_ms": call_ms, "first_ms": ms, "slipped": other,
                     "disconnects": [rc for _, rc in device.disconnects[kicks:]]})
        _wait(lambda: len(device.acks) > 20)


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for step in dict.fromkeys(r["step"] for r in rows):
        of = [r for r in rows if r["step"] == step]
        firsts = [r["first_ms"] for r in of if r["first_ms"] is not None]
        summary[step] = {
            "rounds": len(of),
            "disconnect_reasons": sorted({hex(rc) for r in of for rc in r["disconnects"]}),
            "call_ms_median": round(statistics.median(r["call_ms"] for r in of), 1),
            "first_ms_median": round(statistics.median(firsts), 1) if firsts else None,
            "first_ms_max": round(max(firsts), 1) if firsts else None,
            "publishes_of_the_old_kind_after_call_max": max(r["slipped"] for r in of),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--reconnect-delay", type=int, default=1, help="paho's first reconnect back-off (s)")
    args = parser.parse_args()
    print(json.dumps(measure(args.rounds, args.reconnect_delay), indent=2))


if __name__ == "__main__":
    main()
