"""Thin agent loops: decode, apply the domain, send, then write the table."""

from . import lifecycle, notify, observability, payment, projection, reservation, saga, watchdog

__all__ = ["lifecycle", "notify", "observability", "payment", "projection", "reservation", "saga", "watchdog"]
