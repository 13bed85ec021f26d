"""Thin agent loops: decode, apply the domain, send, then write the table."""

from . import payment, projection, reservation, saga, watchdog

__all__ = ["payment", "projection", "reservation", "saga", "watchdog"]
