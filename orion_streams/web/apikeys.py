"""Admin endpoints for service API keys: create (the key is shown once), list, revoke."""

from __future__ import annotations

from aiohttp import web

from ..adapters.apikeys import SCOPES
from ..domain.errors import FieldError
from .identity import allow
from .problems import not_found, unprocessable
from .views import ApiView, json_response, read_json


class ApiKeysView(ApiView):
    async def post(self, request: web.Request) -> web.Response:
        """201 with the key (shown this once) and its record: `{"name", "scopes": [...]}`."""
        api = self.api
        principal = await api.principal_of(request)
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
        await api.runtime.ready()
        key, record = await api.runtime.api_keys.create(name.strip(), scopes, principal.actor)
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
