"""Ports (small Protocols) and the use cases that drive them."""
