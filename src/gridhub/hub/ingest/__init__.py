"""Ingest sources of the hub that are not a face of their own: broker subscribers (MQTT upload bridge)."""
