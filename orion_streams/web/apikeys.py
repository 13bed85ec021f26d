"""Admin endpoints for service API keys: create (the key is shown once), list, revoke."""

from __future__ import annotations

from aiohttp import web

from ..schemas import ApiKeyRequest, parse
from .identity import allow
from .problems import not_found
from .views import ApiView, json_response, read_json


class ApiKeysView(ApiView):
    async def post(self, request: web.Request) -> web.Response:
        """201 with the key (shown this once) and its record: `{"name", "scopes": [...]}`."""
        api = self.api
        principal = await api.principal_of(request)
        allow(principal, "admin")
        body = parse(ApiKeyRequest, await read_json(request))
        await api.runtime.ready()
        key, record = await api.runtime.api_keys.create(body.name.strip(), body.scopes, principal.actor)
        return json_response({**record, "key": key}, 201)

    async def get(self, request: web.Request) -> web.Response:
        api = self.api
        allow(await api.principal_of(request), "admin")
        await api.runtime.ready()
        return json_response({"items": await api.runtime.api_keys.list(), "next_cursor": None})


class ApiKeyView(ApiView):
    async def get(self, request: web.Request, key_id: str) -> web.Response:
        api = self.api
        allow(await api.principal_of(request), "admin")
        await api.runtime.ready()
        record = await api.runtime.api_keys.get(key_id)
        if record is None:
            raise not_found(f"no API key {key_id}")
        return json_response(record)

    async def delete(self, request: web.Request, key_id: str) -> web.Response:
        """Revoke: the key stops working at once on every worker (each request checks it)."""
        api = self.api
        allow(await api.principal_of(request), "admin")
        await api.runtime.ready()
        record = await api.runtime.api_keys.revoke(key_id)
        if record is None:
            raise not_found(f"no API key {key_id}")
        return json_response(record)


# The views and their paths, as `web.register` adds them.
ROUTES: tuple[tuple[str, type[ApiView]], ...] = (
    ("/v1/api-keys", ApiKeysView),
    ("/v1/api-keys/{key_id}", ApiKeyView),
)
