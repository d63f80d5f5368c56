"""How the nodes talk: MQTT clients, broker URLs, reconnect and busy polling, the message-bus
port with its MQTT and in-memory implementations, and the signal handling of a clean stop.

Modules (import them directly; this package imports none of them, so that a command that
needs only `transport.lifecycle` does not load aiomqtt):

* `transport.urls`: `BrokerAddress`, `BrokerUrlError`, `redact_url`, `ClientAuth`.
* `transport.client`: `make_client` (MQTT v5, TCP_NODELAY, the broker's Receive Maximum as the
  in-flight limit), `routing_queue`, `until_disconnected`.
* `transport.publish`: `publish_now`, `publish_many`, `read_waiting`.
* `transport.reconnect`: `RECONNECT_BACKOFF_S`, `reconnect_delay`, `get_within`, `BusyPoll`.
* `transport.retry`: `RetryPolicy` (tries, backoff, timeouts) and `Tries`, one run of it.
* `transport.presence`: `Status` (Last Will, retained online/offline) and `reconnect`, for both nodes.
* `transport.topics`: topic and filter checks, `topic_matches` (`+`, `#`).
* `transport.port`: the `MessageBus` protocol; `transport.mqtt_bus.MqttBus` and
  `transport.memory.MemoryBus` implement it.
* `transport.lifecycle`: SIGINT/SIGTERM handling and child processes for a clean stop.
"""
