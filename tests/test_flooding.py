"""A flooding device is rate-limited per device and cannot push other devices' evidence out."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sim.fleet import Fleet
from hub import wire
from hub.broker.process import MosquittoProcess
from hub.server.localhub import LocalHub
from tests.e2e import make_env

pytestmark = pytest.mark.broker

FLOOD = 1000


def test_one_flooding_device_does_not_crowd_out_the_others(broker: MosquittoProcess, tmp_path: Path) -> None:
    env = make_env(broker, tmp_path, 11, "honest:1", device_rate_per_s=5.0, device_burst=10)
    flooder, honest = env.devices[0], env.devices[1:]
    with LocalHub(env.settings) as hub, Fleet(broker.host, broker.port, honest, env.hub_key_pem) as fleet:
        epoch = fleet.wait_for_epoch(10)
        assert epoch is not None
        flooder.set_epoch(epoch)
        burst = [flooder.make_evidence(epoch.nonce) for _ in range(FLOOD)]  # valid, distinct, correctly signed
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flooder", protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(1000)
        client.connect(broker.host, broker.port)
        client.loop_start()
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = wire.FIRMWARE_MEDIA_TYPE
        started = time.monotonic()
        infos = [client.publish(wire.device_topic(flooder.device_id, wire.EVIDENCE), raw, qos=1, properties=props)
                 for raw in burst[: FLOOD // 2]]
        for _ in range(3):
            fleet.publish_round()
        infos += [client.publish(wire.device_topic(flooder.device_id, wire.EVIDENCE), raw, qos=1,
                                 properties=props) for raw in burst[FLOOD // 2:]]
        for info in infos:
            info.wait_for_publish(30)
        assert fleet.flush(10)
        assert fleet.wait_for(lambda: hub.workers[0].health.processed >= FLOOD + 30, 60)
        elapsed = time.monotonic() - started
        client.disconnect()
        client.loop_stop()
    honest_verdicts = [v for d in honest for v in env.verdicts(d.device_id)]
    flood_verdicts = env.verdicts(flooder.device_id)
    assert len(honest_verdicts) == 30 and all(v["status"] == "affirming" for v in honest_verdicts)
    allowed = 10 + 5.0 * elapsed
    assert 0 < len(flood_verdicts) <= allowed + 1, (len(flood_verdicts), allowed)
