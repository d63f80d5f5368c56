"""edgespec: edge-cloud speculative decoding for camera fleets over MQTT."""

__version__ = "0.1.0"
