"""aiohttp middleware: a correlation id, a log line, metrics and a span for every request, and problem+json for every error."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from .. import logs, metrics, tracing
from ..adapters.postgres import database_unavailable
from ..domain.errors import DomainError
from ..records import CORRELATION_ID as _VALID_ID
from .problems import ApiError, from_domain, problem_response, unavailable

log = logging.getLogger("orion.web")

CORRELATION_ID = "X-Correlation-ID"
# Where the request's correlation id is kept, for the views (a typed key: aiohttp warns of str keys).
CORRELATION_KEY = web.RequestKey("correlation_id", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Polled by orchestrators and Prometheus: logged at debug so they do not drown the rest.
_QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})


def route_of(request: web.Request) -> str:
    """The route template (`/v1/orders/{order_id}`), never the raw path: bounded label values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def correlation_and_problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get(CORRELATION_ID, "")
    cid = incoming if _VALID_ID.fullmatch(incoming) else uuid.uuid4().hex
    request[CORRELATION_KEY] = cid
    log_token = logs.bind(correlation_id=cid)
    started = time.perf_counter()
    status = 500
    route = route_of(request)
    http_span = tracing.start(
        f"{request.method} {route}", "server", attributes={"http.request.method": request.method, "http.route": route}
    )
    try:
        try:
            if "\x00" in request.path or "\x00" in request.query_string:
                raise ApiError(400, "Bad Request", "the path or query must not contain NUL")
            with tracing.current(http_span):
                response = await handler(request)
        except ApiError as exc:
            response = problem_response(exc)
        except DomainError as exc:  # a use case refused: what the caller asked cannot be done
            response = problem_response(from_domain(exc))
        except web.HTTPException as exc:
            if exc.status < 400:
                status = exc.status
                raise
            response = problem_response(ApiError(exc.status, exc.reason, exc.text or exc.reason))
        except Exception as exc:
            if database_unavailable(exc):
                # PostgreSQL is away (restarting, failing over): nothing was accepted; say so
                # and when to come back, as for any overload.
                log.warning("%s %s: the database is unavailable: %s", request.method, request.path, exc)
                response = problem_response(unavailable("the database is unavailable; try again shortly"))
            else:
                log.exception("unhandled error on %s %s", request.method, request.path)
                response = problem_response(ApiError(500, "Internal Server Error", f"something went wrong; quote {cid}"))
        if not response.prepared:
            response.headers[CORRELATION_ID] = cid
        status = response.status
        return response
    finally:
        if http_span is not None:
            http_span.set_attribute("http.response.status_code", status)
            tracing.finish(http_span, failed=status >= 500)
        _observe(request, route, status, time.perf_counter() - started)
        logs.unbind(log_token)


def _observe(request: web.Request, route: str, status: int, seconds: float) -> None:
    if "wait" in request.query:  # held until the order is decided: timed apart from the rest
        route += "?wait"
    metrics.labelled(metrics.HTTP_REQUESTS, route, request.method, str(status)).inc()
    if status != 101:  # a WebSocket's time is its whole session, not a request's
        metrics.labelled(metrics.HTTP_LATENCY, route, request.method).observe(seconds)
    level = logging.DEBUG if route in _QUIET_ROUTES else logging.INFO
    if log.isEnabledFor(level):
        log.log(
            level, "%s %s %d %.1f ms", request.method, route, status, seconds * 1000,
            extra={"http_status": status, "duration_ms": round(seconds * 1000, 1), "route": route},
        )
