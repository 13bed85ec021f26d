"""HTTP problems (RFC 9457, application/problem+json) and the errors that become them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from ..domain.errors import (
    Conflict,
    DomainError,
    FieldError,
    NotFound,
    Unprocessable,
    ValidationFailed,
)

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """An error with an HTTP status; the middleware turns it into problem+json."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        *,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail or title
        self.errors = list(errors)
        self.headers = headers or {}


def problem_body(status: int, title: str, detail: str, errors: Sequence[FieldError] = ()) -> dict[str, Any]:
    slug = title.lower().replace(" ", "-")
    return {
        "type": f"https://orion.dev/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "errors": [{"field": e.field, "message": e.message} for e in errors],
    }


def problem_response(error: ApiError) -> web.Response:
    body = problem_body(error.status, error.title, error.detail, error.errors)
    return web.Response(
        status=error.status,
        body=json.dumps(body).encode(),
        content_type=PROBLEM_JSON,
        headers=error.headers,
    )


def from_domain(error: DomainError) -> ApiError:
    """The problem a use case's refusal is: 404, 409 or 422 with every field's error."""
    match error:
        case NotFound():
            return not_found(str(error))
        case Conflict():
            return conflict(str(error))
        case ValidationFailed():
            return unprocessable(error.errors)
        case Unprocessable():
            return ApiError(422, "Unprocessable Content", str(error))
    raise TypeError(f"no problem for {type(error).__name__}") from error


def bad_request(detail: str) -> ApiError:
    return ApiError(400, "Bad Request", detail)


def unauthorized(detail: str) -> ApiError:
    return ApiError(401, "Unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="orion"'})


def forbidden(detail: str) -> ApiError:
    return ApiError(403, "Forbidden", detail)


def not_found(detail: str) -> ApiError:
    return ApiError(404, "Not Found", detail)


def conflict(detail: str) -> ApiError:
    return ApiError(409, "Conflict", detail)


def unprocessable(errors: Sequence[FieldError]) -> ApiError:
    return ApiError(422, "Unprocessable Content", "the request has invalid fields", errors=errors)


def unavailable(detail: str) -> ApiError:
    return ApiError(503, "Service Unavailable", detail, headers={"Retry-After": "1"})
