"""Faults under load, judged from the outside (see tests/e2e/faults/).

`make test` runs the quick scenarios at a small scale; `make test-faults` (ORION_FAULTS=full)
runs every scenario at full scale. Either way one table is printed at the end.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .faults import REPORT
from .faults.scenarios import FULL, QUICK, SCENARIOS, run_scenario

FULL_RUN = os.environ.get("ORION_FAULTS") == "full"
QUICK_SCENARIOS = ["kill", "scale", "replay", "poison"]
# ORION_FAULT_SCENARIOS=flash,pause picks scenarios (at the scale ORION_FAULTS gives).
CHOSEN = [n for n in os.environ.get("ORION_FAULT_SCENARIOS", "").split(",") if n]


@pytest.mark.parametrize("name", CHOSEN or (list(SCENARIOS) if FULL_RUN else QUICK_SCENARIOS))
def test_nothing_is_lost_oversold_or_stuck(name: str, tmp_path: Path) -> None:
    verdict, history, logs = run_scenario(name, tmp_path, FULL if FULL_RUN else QUICK)
    REPORT.append(verdict)
    assert verdict.acknowledged > 0, history.ops[:5]
    assert not verdict.failures, (
        f"{verdict.explain()}\nnotes: {verdict.notes}\nfaults: {history.events}\n{logs}"
    )
