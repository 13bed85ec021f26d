"""Thin agent loops: decode, apply the domain, send, then write the table."""

from . import notify, observability, payment, projection, reservation, saga, watchdog

__all__ = ["notify", "observability", "payment", "projection", "reservation", "saga", "watchdog"]
