"""Orion: an event-driven order and inventory backend on Faust, Kafka and PostgreSQL."""

__version__ = "0.1.0"
