"""MQTT transport: events in from `ioc/v1/events/{source}`, dead letters and alerts out (see README.md).

`MqttSession` keeps the connection, `MqttConnector` runs the intake on it, `MqttPublisher` publishes on it.
"""

from ioc.connectors.mqtt.connector import MqttConnector
from ioc.connectors.mqtt.publisher import MqttPublisher
from ioc.connectors.mqtt.session import MqttSession

__all__ = ["MqttConnector", "MqttPublisher", "MqttSession"]
