"""The MQTT edge: the paho transport with manual acknowledgement, the Mosquitto process used by the demo and
tests, and quarantine enforced at the broker.

See README.md in this folder for what the package owns and what it may import.
"""

from hub.broker.enforcement import BrokerEnforcer, EnforcementError, enforcer_from_settings
from hub.broker.process import MosquittoProcess, free_port, render_acl
from hub.broker.transport import BrokerAddress, MqttTransport, TransportError

__all__ = [
    "BrokerAddress", "BrokerEnforcer", "EnforcementError", "MosquittoProcess", "MqttTransport",
    "TransportError", "enforcer_from_settings", "free_port", "render_acl",
]
