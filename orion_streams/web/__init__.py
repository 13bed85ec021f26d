"""The HTTP API: Faust web views, JWT auth, problem+json errors and correlation ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..agents import Agents
    from ..app import Orion
    from .views import Api


def register(orion: Orion, agents: Agents) -> Api:
    """Add the API's views, the ops console's page, `/v1/ws` and its live feed, and the
    admission door's reading to the worker's app."""
    from . import admission, apikeys, console, dead_letters, notifications, openapi, views, ws

    api = views.Api(
        orion.settings, orion.runtime, orion.bus, agents.watchdog, recovered=orion.assignment.recovered,
    )
    for path, view in (
        *views.ROUTES, *apikeys.ROUTES, *notifications.ROUTES, *dead_letters.ROUTES, *openapi.ROUTES,
        *console.ROUTES,
    ):
        # A class of this app's own, so two apps in one process never share an `api`.
        orion.app.page(path)(type(view.__name__, (view,), {"api": api}))
    admission.register(orion)
    ws.register(orion, api.verifier)
    return api
