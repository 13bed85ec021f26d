"""aiohttp middlewares: a correlation id on every request and problem+json for every error."""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from .problems import ApiError, problem_body, problem_response

log = logging.getLogger("orion.web")

CORRELATION_ID = "X-Correlation-ID"
correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _problem(status: int, title: str, detail: str) -> web.Response:
    import json

    return web.Response(
        status=status, body=json.dumps(problem_body(status, title, detail)).encode(),
        content_type="application/problem+json",
    )


@web.middleware
async def correlation_and_problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get(CORRELATION_ID, "")
    cid = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex
    request["correlation_id"] = cid
    token = correlation_id.set(cid)
    try:
        try:
            if "\x00" in request.path or "\x00" in request.query_string:
                raise ApiError(400, "Bad Request", "the path or query must not contain NUL")
            response = await handler(request)
        except ApiError as exc:
            response = problem_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _problem(exc.status, exc.reason, exc.text or exc.reason)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = _problem(500, "Internal Server Error", f"something went wrong; quote {cid}")
        if not response.prepared:
            response.headers[CORRELATION_ID] = cid
        return response
    finally:
        correlation_id.reset(token)
