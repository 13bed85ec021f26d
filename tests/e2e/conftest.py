"""End-to-end tests: whole worker processes on fresh services, with faults."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..integration.harness import Services, running_services


@pytest.fixture
def fresh_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with running_services(tmp_path_factory.mktemp("orion-e2e")) as svc:
        yield svc
