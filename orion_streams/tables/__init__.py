"""Changelog-backed tables; each has exactly one writing agent (see agents/)."""

from ..app import holds, sagas, stock

__all__ = ["holds", "sagas", "stock"]
