"""Thin agent loops: decode, apply the domain, send, then write the table."""

from . import notify, payment, projection, reservation, saga, watchdog

__all__ = ["notify", "payment", "projection", "reservation", "saga", "watchdog"]
