"""Processes load only what they run: the mailer and the domain pull in no Faust, no agent
and no worker app (importing the app builds it and its Kafka clients)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("faust", "orion_streams.app", "orion_streams.agents", "orion_streams.web", "orion_streams.tables")


@pytest.mark.parametrize("module", ["orion_streams.mailer", "orion_streams.domain.saga", "orion_streams.records", "orion_streams.schemas",
                                    "orion_streams.services.stock_commands", "orion_streams.config"])
def test_module_loads_nothing_of_the_worker(module: str) -> None:
    script = f"import sys, {module}; print('\\n'.join(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], f"{module} loads {result.stdout.split()}"
