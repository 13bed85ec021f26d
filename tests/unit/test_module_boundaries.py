"""Processes load only what they run: the mailer and the domain pull in no Faust, no agent
and no worker app; and no module builds anything at import (`create_app` does)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HEAVY = ("faust", "orion_streams.app", "orion_streams.agents", "orion_streams.web", "orion_streams.tables")


@pytest.mark.parametrize("module", ["orion_streams.mailer", "orion_streams.domain.saga", "orion_streams.records", "orion_streams.schemas",
                                    "orion_streams.services.stock_commands", "orion_streams.config"])
def test_module_loads_nothing_of_the_worker(module: str) -> None:
    script = f"import sys, {module}; print('\\n'.join(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], f"{module} loads {result.stdout.split()}"


def test_importing_every_module_builds_no_app() -> None:
    """The composition root builds the worker; no module does at import (no Faust app, no
    table, no agent, no client)."""
    script = (
        "import gc, importlib, pkgutil, faust, orion_streams\n"
        "for m in pkgutil.walk_packages(orion_streams.__path__, 'orion_streams.'):\n"
        "    if '.migrations' not in m.name: importlib.import_module(m.name)\n"
        "print(sum(isinstance(o, faust.App) for o in gc.get_objects()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0"]


def test_create_app_wires_the_agents_and_every_route(tmp_path: Path) -> None:
    from orion_streams.app import create_app
    from orion_streams.config import Settings

    orion = create_app(Settings(state_dir=tmp_path, partitions=3))
    app = orion.app
    assert {agent.name for agent in app.agents.values()} == {
        "orion_streams.agents.saga.order_saga", "orion_streams.agents.reservation.reserve_stock",
        "orion_streams.agents.payment.take_payment",
    }
    assert set(app.tables) == {"sagas", "inventory"}
    assert all(table.partitions == 3 for table in app.tables.values())
    paths = {route.resource.canonical for route in app.web.web_app.router.routes()}  # type: ignore[attr-defined]
    assert {"/v1/orders", "/v1/ws", "/openapi.json", "/ready", "/v1/api-keys", "/console", "/console/{name}"} <= paths
    # Each app has its own views: a second app does not share the first one's Api.
    other = create_app(Settings(state_dir=tmp_path, worker_id="w2"))
    first: Any = app.web.views["/v1/orders"]
    second: Any = other.app.web.views["/v1/orders"]
    assert first.api is not second.api and second.api.settings.worker_id == "w2"
