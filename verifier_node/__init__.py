"""The cloud side: the MQTT service that owns sessions and verifies drafts with the target."""
