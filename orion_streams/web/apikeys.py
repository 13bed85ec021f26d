"""Admin endpoints for service API keys: create (the key is shown once), list, revoke."""

from __future__ import annotations

from aiohttp import web
from faust.web import View

from ..adapters.apikeys import SCOPES
from ..app import app, runtime
from ..domain.errors import FieldError
from .identity import allow
from .problems import not_found, unprocessable
from .views import json_response, principal_of, read_json


@app.page("/v1/api-keys")
class ApiKeysView(View):
    async def post(self, request: web.Request) -> web.Response:
        """201 with the key (shown this once) and its record: `{"name", "scopes": [...]}`."""
        principal = await principal_of(request)
        allow(principal, "admin")
        body = await read_json(request)
        if not isinstance(body, dict):
            raise unprocessable([FieldError("body", "must be a JSON object")])
        errors = []
        name, scopes = body.get("name"), body.get("scopes")
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 100:
            errors.append(FieldError("name", "must be a string of 1 to 100 characters"))
        if (not isinstance(scopes, list) or not scopes
                or not all(isinstance(x, str) and x in SCOPES for x in scopes)):
            errors.append(FieldError("scopes", f"a non-empty list of: {', '.join(sorted(SCOPES))}"))
        errors.extend(FieldError(k, "is not accepted") for k in sorted(set(body) - {"name", "scopes"}))
        if errors:
            raise unprocessable(errors)
        assert isinstance(name, str) and isinstance(scopes, list)
        await runtime.ready()
        key, record = await runtime.api_keys.create(name.strip(), scopes, principal.actor)
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
