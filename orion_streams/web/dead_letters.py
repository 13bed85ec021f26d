"""Dead letters over HTTP (admins, or API keys with the `ops` scope): list them, read one,
and replay fixed ones to the topic they came from (services/dead_letters.py)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..schemas import DeadLetterListQuery, ReplayRequest, parse
from ..services import dead_letters
from .identity import allow
from .middleware import CORRELATION_KEY
from .problems import ApiError, not_found, unavailable
from .views import ApiView, json_response, paged, read_json


class DeadLettersView(ApiView):
    async def get(self, request: web.Request) -> web.Response:
        """Newest first, open ones by default."""
        api = self.api
        allow(await api.principal_of(request), "admin", scope="ops")
        query = parse(DeadLetterListQuery, request.query)
        await api.runtime.ready()
        return await paged(api.runtime.dead_letters.page(
            status=None if query.status == "all" else query.status, limit=query.limit, cursor=query.cursor))


class DeadLetterView(ApiView):
    async def get(self, request: web.Request, dead_letter_id: str) -> web.Response:
        api = self.api
        allow(await api.principal_of(request), "admin", scope="ops")
        await api.runtime.ready()
        row = await api.runtime.dead_letters.get(dead_letter_id)
        if row is None:
            raise not_found(f"no dead letter {dead_letter_id}")
        return json_response(row)


async def _caller(view: ApiView, request: web.Request) -> dead_letters.Caller:
    """Who asks (an admin, or a key with `ops`), checked before the body is read."""
    principal = await view.api.principal_of(request)
    allow(principal, "admin", scope="ops")
    return dead_letters.Caller(principal.actor, ",".join(sorted(principal.roles)) or None, request[CORRELATION_KEY])


async def _replay(view: ApiView, caller: dead_letters.Caller, ids: list[str]) -> list[dead_letters.Outcome]:
    api = view.api
    runtime = await api.runtime.ready()

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> tuple[int, int]:
        try:
            metadata = await api.bus.send_raw(topic, key, value, headers)
        except Exception as exc:  # nothing was recorded: the caller may retry safely
            raise unavailable(f"could not reach Kafka: {type(exc).__name__}") from exc
        return metadata.partition, metadata.offset

    return await dead_letters.replay(
        ids, caller, runtime.dead_letters, lambda: runtime.catalog, runtime.refresh_catalog_if_stale, send)


class ReplayView(ApiView):
    async def post(self, request: web.Request, dead_letter_id: str) -> web.Response:
        """Replay one: 200 replayed or already replayed, 404 unknown, 422 when it would fail again."""
        (outcome,) = await _replay(self, await _caller(self, request), [dead_letter_id])
        if outcome.outcome == "not_found":
            raise not_found(outcome.detail)
        if outcome.outcome == "refused":
            raise ApiError(422, "Unprocessable Content", f"dead letter {dead_letter_id} not replayed: {outcome.detail}")
        return json_response(outcome.view())


class ReplayManyView(ApiView):
    async def post(self, request: web.Request) -> web.Response:
        """Replay a selection, each in turn: 200 with every one's outcome."""
        caller = await _caller(self, request)
        body: Any = await read_json(request)
        outcomes = await _replay(self, caller, parse(ReplayRequest, body).ids)
        return json_response({"items": [o.view() for o in outcomes]})


# The views and their paths, as `web.register` adds them.
ROUTES: tuple[tuple[str, type[ApiView]], ...] = (
    ("/v1/dead-letters", DeadLettersView),
    ("/v1/dead-letters/replay", ReplayManyView),
    ("/v1/dead-letters/{dead_letter_id}", DeadLetterView),
    ("/v1/dead-letters/{dead_letter_id}/replay", ReplayView),
)
