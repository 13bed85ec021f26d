"""Fault injection: a whole deployment under load and faults, judged from the outside."""

from __future__ import annotations

from .checker import Verdict

# Verdicts of this session's scenarios, printed as one table at the end (tests/e2e/conftest.py).
REPORT: list[Verdict] = []
