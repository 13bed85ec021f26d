"""Admin endpoints for service API keys: create (the key is shown once), list, revoke."""

from __future__ import annotations

from aiohttp import web
from faust.web import View

from ..app import app, runtime
from ..schemas import ApiKeyRequest, parse
from .identity import allow
from .problems import not_found
from .views import json_response, principal_of, read_json


@app.page("/v1/api-keys")
class ApiKeysView(View):
    async def post(self, request: web.Request) -> web.Response:
        """201 with the key (shown this once) and its record: `{"name", "scopes": [...]}`."""
        principal = await principal_of(request)
        allow(principal, "admin")
        body = parse(ApiKeyRequest, await read_json(request))
        await runtime.ready()
        key, record = await runtime.api_keys.create(body.name.strip(), body.scopes, principal.actor)
        return json_response({**record, "key": key}, 201)

    async def get(self, request: web.Request) -> web.Response:
        allow(await principal_of(request), "admin")
        await runtime.ready()
        return json_response({"items": await runtime.api_keys.list(), "next_cursor": None})


@app.page("/v1/api-keys/{key_id}")
class ApiKeyView(View):
    async def get(self, request: web.Request, key_id: str) -> web.Response:
        allow(await principal_of(request), "admin")
        await runtime.ready()
        record = await runtime.api_keys.get(key_id)
        if record is None:
            raise not_found(f"no API key {key_id}")
        return json_response(record)

    async def delete(self, request: web.Request, key_id: str) -> web.Response:
        """Revoke: the key stops working at once on every worker (each request checks it)."""
        allow(await principal_of(request), "admin")
        await runtime.ready()
        record = await runtime.api_keys.revoke(key_id)
        if record is None:
            raise not_found(f"no API key {key_id}")
        return json_response(record)
