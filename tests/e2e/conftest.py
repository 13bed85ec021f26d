"""End-to-end tests: whole worker processes on fresh services, with faults."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..integration.harness import Services, running_services


@pytest.fixture
def fresh_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with running_services(tmp_path_factory.mktemp("orion-e2e")) as svc:
        yield svc


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from .faults import REPORT
    from .faults.checker import table

    if REPORT:
        terminalreporter.write_sep("=", "faults")
        terminalreporter.write_line(table(REPORT))
        for v in REPORT:
            for note in v.notes:
                terminalreporter.write_line(f"{v.scenario}: {note}")
