"""MQTT transport: events in from `ioc/v1/events/{source}`, dead letters out (see README.md)."""

from ioc.connectors.mqtt.connector import MqttConnector

__all__ = ["MqttConnector"]
