"""`GET /openapi.json`: the OpenAPI 3.1 description of the HTTP API, served without auth.

The document is written by hand, next to the views it describes, and says exactly what they
accept and answer: request bodies with `additionalProperties: false` where a view refuses
unknown fields, every status each view can return, problem+json errors as `problems.py`
builds them and the `X-Correlation-ID` header of every response. Limits come from the
domain constants the views use, so they cannot drift apart. `tests/integration/test_openapi.py`
checks the document against the OpenAPI 3.1 meta-schema and the router, and fuzzes the
running worker with it (schemathesis).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from aiohttp import web
from faust.web import View

from ..app import app
from ..domain.orders import MAX_LINES, MAX_QUANTITY, MAX_TOKEN_LENGTH, OrderStatus
from ..domain.stock import ADJUSTMENT_REASONS
from ..schemas import MAX_WAIT, SCOPES
from .middleware import CORRELATION_ID

PATH = "/openapi.json"
VERSION = "1.0.0"
JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
# Python's `\s` (str.isspace) as a regex class that reads the same in ECMA-262, Rust and
# Python regexes: the views validate with Python's `re`, JSON Schema tools use the others.
WHITESPACE = "\\t-\\r\\x1c- \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
# domain/orders.py: [^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}, matched in full, at most 254 characters.
# apikeys.py: 1 to 100 characters once surrounding whitespace is stripped (it is stored stripped).
NAME_PATTERN = f"^[{WHITESPACE}]*[^{WHITESPACE}](?:[\\s\\S]{{0,98}}[^{WHITESPACE}])?[{WHITESPACE}]*$"
EMAIL_PATTERN = f"^[^@{WHITESPACE}]{{1,64}}@[^@{WHITESPACE}]+\\.[^@{WHITESPACE}]{{2,}}$"
MAX_ADJUSTMENT = 1_000_000
REASONS = sorted(ADJUSTMENT_REASONS - {"seed"})
STATUSES = [s.value for s in OrderStatus]
NOTIFICATION_STATUSES = ["queued", "sent", "failed"]

# Titles of the problems Orion raises (problems.py, views.py, ws.py); a 413 comes from aiohttp
# with the reason phrase of the Python it runs on, so its title is left open.
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    415: "Unsupported Media Type",
    426: "Upgrade Required",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


def ref(kind: str, name: str) -> dict[str, str]:
    """A `$ref` to `#/components/<kind>/<name>`."""
    return {"$ref": f"#/components/{kind}/{name}"}


def schema_ref(name: str) -> dict[str, str]:
    """A `$ref` to a component schema."""
    return ref("schemas", name)


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema or JSON null (OpenAPI 3.1: a type list)."""
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    return out


def obj(properties: dict[str, Any], *, optional: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """A closed object: every property required unless listed in `optional`."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [name for name in properties if name not in optional],
        "properties": properties,
        **extra,
    }


STRING: dict[str, Any] = {"type": "string"}
INTEGER: dict[str, Any] = {"type": "integer"}
NUMBER: dict[str, Any] = {"type": "number"}
TIMESTAMP: dict[str, Any] = {"type": "string", "format": "date-time"}


def _correlation_header() -> dict[str, Any]:
    """The X-Correlation-ID every response carries (the middleware sets it)."""
    return ref("headers", "X-Correlation-ID")


def json_response(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An application/json response."""
    return {
        "description": description,
        "headers": {CORRELATION_ID: _correlation_header(), **(headers or {})},
        "content": {JSON: {"schema": schema}},
    }


def problem(status: int, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A problem+json response with this status; only 422 lists field errors."""
    exact: dict[str, Any] = {"status": {"const": status}}
    if status in TITLES:
        title = TITLES[status]
        exact["title"] = {"const": title}
        exact["type"] = {"const": f"https://orion.dev/problems/{title.lower().replace(' ', '-')}"}
    schema = schema_ref("ValidationProblem") if status == 422 else {
        "allOf": [schema_ref("Problem"), {"properties": exact}]
    }
    return {
        "description": description,
        "headers": {CORRELATION_ID: _correlation_header(), **(headers or {})},
        "content": {PROBLEM_JSON: {"schema": schema}},
    }


RETRY_AFTER: dict[str, Any] = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
}


def unauthorized() -> dict[str, Any]:
    """401: problems.unauthorized (JWTs) or identity.authenticate (API keys)."""
    return problem(401, "Missing, malformed, expired or badly signed credentials", {
        "WWW-Authenticate": {"description": 'Bearer realm="orion" (JWT failures)', "schema": STRING},
    })


def forbidden(roles: str | None, scope: str | None) -> dict[str, Any]:
    """identity.allow: a JWT needs one of `roles` (any role when None), an API key `scope`
    (no key may call an endpoint without one)."""
    keys = f"an API key without the scope {scope}" if scope else "any API key (keys cannot use this endpoint)"
    if roles is None:
        return problem(403, keys[0].upper() + keys[1:])
    return problem(403, f"A JWT without one of the roles {roles}, or {keys}")


def rate_limited() -> dict[str, Any]:
    """429 from the per-caller order rate limit, with the seconds to wait."""
    return problem(429, "Too many orders from this caller (per worker); retry later", {
        **RETRY_AFTER, "Retry-After": {**RETRY_AFTER["Retry-After"], "required": True},
    })


def unavailable(what: str) -> dict[str, Any]:
    """503 from problems.unavailable (Retry-After: 1)."""
    return problem(503, f"{what}; safe to retry", RETRY_AFTER)


def v1(
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    tag: str,
    roles: str | None = None,
    scope: str | None = None,
    parameters: list[dict[str, Any]] | None = None,
    request_body: dict[str, Any] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """An authenticated /v1 operation: a JWT (needing one of `roles`, when given) or, where
    `scope` is given, an API key with that scope (OpenAPI 3.1 lets the requirement name it).
    401 and 403 come with every one of them."""
    op: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "security": [{"bearerAuth": []}, *([{"apiKeyAuth": [scope]}] if scope else [])],
        "parameters": [ref("parameters", "CorrelationId"), *(parameters or [])],
    }
    if description:
        op["description"] = description
    if request_body is not None:
        op["requestBody"] = request_body
    all_responses = {
        # The middleware refuses U+0000 anywhere in the path or query before any view runs.
        "400": problem(400, "The path or query contains U+0000"),
        **responses,
        "401": unauthorized(),
        "403": forbidden(roles, scope),
    }
    op["responses"] = dict(sorted(all_responses.items()))
    return op


def path_param(name: str, description: str) -> dict[str, Any]:
    """A path parameter: any non-empty string reaches the view."""
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}}


def json_body(schema_name: str, example: dict[str, Any]) -> dict[str, Any]:
    """A required application/json request body (views.read_json)."""
    return {"required": True, "content": {JSON: {"schema": schema_ref(schema_name), "example": example}}}


# Every JSON body: text holding U+0000 or unpaired surrogates (which JSON escapes can spell)
# is a 422 on "body", whatever the schema of the field.
BODY_PROBLEMS: dict[str, Any] = {
    "400": problem(400, "The body is not valid JSON or is nested too deeply, or the path or query contains U+0000"),
    "413": problem(413, "The body is larger than 256 KiB"),
    "415": problem(415, "The Content-Type is not application/json"),
}

ORDER_ID = path_param("order_id", "The order's id")
SKU = path_param("sku", "A product's SKU")
NOTIFICATION_ID = path_param("notification_id", "The notification's id")
LIMIT = "Page size"
CURSOR: dict[str, Any] = {
    "name": "cursor", "in": "query", "required": False, "schema": STRING,
    "description": "`next_cursor` of the previous page; anything else is a 422",
}

API_KEY: dict[str, Any] = {
    "id": STRING,
    "name": STRING,
    "prefix": {"type": "string", "description": "The key's first characters, to recognise it"},
    "scopes": {"type": "array", "items": {"type": "string", "enum": sorted(SCOPES)}},
    "created_by": {"type": "string", "description": "The admin who created it (actor)"},
    "created_at": TIMESTAMP,
    "last_used_at": {**nullable(TIMESTAMP), "description": "Updated at most once a minute"},
    "revoked_at": nullable(TIMESTAMP),
    "active": {"type": "boolean", "description": "Not revoked"},
}

SCHEMAS: dict[str, Any] = {
    "FieldError": obj({"field": STRING, "message": STRING}),
    "Problem": obj(
        {
            "type": {"type": "string", "format": "uri", "pattern": "^https://orion\\.dev/problems/[a-z0-9-]+$"},
            "title": STRING,
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": STRING,
            "errors": {"type": "array", "maxItems": 0, "items": schema_ref("FieldError")},
        },
        description="RFC 9457 problem details; `errors` is empty except on 422",
    ),
    "ValidationProblem": obj(
        {
            "type": {"const": "https://orion.dev/problems/unprocessable-content"},
            "title": {"const": "Unprocessable Content"},
            "status": {"const": 422},
            "detail": STRING,
            "errors": {"type": "array", "items": schema_ref("FieldError")},
        },
        description="A 422: every invalid field with why (empty when an Idempotency-Key was reused "
                    "with a different request)",
    ),
    "OrderLineRequest": obj(
        {
            "sku": {"type": "string", "minLength": 1,
                    "description": "A SKU of the catalog (`GET /v1/products`); an unknown or inactive one is a 422"},
            "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_QUANTITY,
                         "description": "A JSON whole number (1.0 is refused)"},
        },
    ),
    "OrderRequest": obj(
        {
            "lines": {
                "type": "array", "minItems": 1, "maxItems": MAX_LINES, "items": schema_ref("OrderLineRequest"),
                "description": f"Lines of the same SKU are merged; a SKU's total quantity is at most {MAX_QUANTITY}",
            },
            "payment": obj({
                "token": {"type": "string", "minLength": 1, "maxLength": MAX_TOKEN_LENGTH,
                          "pattern": f"[^{WHITESPACE}]",
                          "description": "Sandbox: tok_ok approves, tok_timeout never answers, anything else declines"},
            }),
            "email": {"type": "string", "maxLength": 254, "pattern": EMAIL_PATTERN},
        },
        description="Prices, status, totals and the owner are set by Orion; sending them is a 422",
    ),
    "OrderLine": obj({
        "sku": STRING,
        "quantity": {"type": "integer", "minimum": 1},
        "unit_price": {"type": "integer", "description": "Minor units of the order's currency"},
        "line_total": INTEGER,
    }),
    "Order": obj({
        "order_id": STRING,
        "user_id": STRING,
        "status": {"type": "string", "enum": STATUSES},
        "lines": {"type": "array", "items": schema_ref("OrderLine")},
        "total": {"type": "integer", "description": "Minor units"},
        "currency": {"type": "string", "maxLength": 3},
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
        "failure_reason": nullable(STRING),
    }),
    "OrderPage": obj({"items": {"type": "array", "items": schema_ref("Order")}, "next_cursor": nullable(STRING)}),
    "Links": obj({"self": {"type": "string", "pattern": "^/v1/orders/"}}),
    "OrderAccepted": obj({
        "order_id": STRING, "status": {"const": "PENDING"}, "links": schema_ref("Links"),
    }),
    "CancelAccepted": obj({
        "order_id": STRING,
        "status": {"enum": ["CANCELLING", "CANCELLED"]},
        "links": schema_ref("Links"),
    }),
    "FulfilAccepted": obj({"order_id": STRING, "links": schema_ref("Links")}),
    "OrderEvent": obj({
        "seq": {"type": "integer", "minimum": 1},
        "type": {"type": "string", "description": "The event's type, e.g. OrderPlaced, LineReserved, PaymentAuthorized"},
        "at": TIMESTAMP,
        "data": {"type": "object"},
        "correlation_id": nullable(STRING),
        "actor": nullable(STRING),
        "actor_roles": {"type": "array", "items": STRING, "description": "Roles of the actor, when known"},
    }),
    "OrderEventList": obj({"items": {"type": "array", "items": schema_ref("OrderEvent")}, "next_cursor": {"type": "null"}}),
    "Product": obj({
        "sku": STRING, "name": STRING, "unit_price": INTEGER,
        "currency": {"type": "string", "maxLength": 3}, "active": {"type": "boolean"},
        "category": {"type": "string", "description": "The SKU class metrics group reservations by"},
    }),
    "ProductList": obj({"items": {"type": "array", "items": schema_ref("Product")}, "next_cursor": {"type": "null"}}),
    "StockLevel": obj({
        "sku": STRING,
        "on_hand": INTEGER,
        "reserved": INTEGER,
        "available": {"type": "integer", "description": "on_hand - reserved"},
        "low_stock_threshold": INTEGER,
        "low_stock": {"type": "boolean", "description": "available <= low_stock_threshold"},
    }),
    "StockPage": obj({"items": {"type": "array", "items": schema_ref("StockLevel")}, "next_cursor": nullable(STRING)}),
    "AdjustmentRequest": obj(
        {
            "delta": {"type": "integer", "minimum": -MAX_ADJUSTMENT, "maximum": MAX_ADJUSTMENT, "not": {"const": 0},
                      "description": "Units to add (negative: remove); not zero"},
            "reason": {"type": "string", "enum": REASONS},
            "low_stock_threshold": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_ADJUSTMENT,
                                    "description": "A new threshold; absent or null keeps the current one"},
        },
        optional=("low_stock_threshold",),
    ),
    "AdjustmentApplied": obj({
        "adjustment_id": STRING, "status": {"const": "applied"}, "level": {"oneOf": [schema_ref("StockLevel"), {"type": "null"}]},
    }),
    "AdjustmentPending": obj({"adjustment_id": STRING, "status": {"const": "pending"}}),
    "Notification": obj({
        "id": STRING,
        "order_id": nullable(STRING),
        "sku": nullable(STRING),
        "template": STRING,
        "recipient": {"type": "string", "description": "Comma-separated addresses"},
        "subject": nullable(STRING),
        "status": {"type": "string", "enum": NOTIFICATION_STATUSES},
        "attempts": {"type": "integer", "minimum": 0},
        "last_error": nullable(STRING),
        "server": nullable(STRING),
        "message_id": nullable(STRING),
        "correlation_id": nullable(STRING),
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
        "next_attempt_at": {**nullable(TIMESTAMP), "description": "Set while queued"},
        "sent_at": nullable(TIMESTAMP),
    }),
    "NotificationList": obj({"items": {"type": "array", "items": schema_ref("Notification")}, "next_cursor": {"type": "null"}}),
    "ApiKeyRequest": obj({
        "name": {"type": "string", "pattern": NAME_PATTERN,
                 "description": "1 to 100 characters, stored without surrounding whitespace"},
        "scopes": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": sorted(SCOPES)}},
    }),
    "ApiKey": obj(API_KEY),
    "ApiKeyCreated": obj({**API_KEY, "key": {"type": "string", "pattern": "^orion_",
                                             "description": "The key itself: shown only now"}}),
    "ApiKeyList": obj({"items": {"type": "array", "items": schema_ref("ApiKey")}, "next_cursor": {"type": "null"}}),
    "Health": obj({"status": {"const": "ok"}, "worker": STRING}),
    "Admission": obj(
        {
            "open": {"type": "boolean", "description": "Whether POST /v1/orders takes new orders now"},
            "reason": nullable(STRING),
            "in_flight": nullable(INTEGER),
            "decisions_per_second": nullable(NUMBER),
            "queue_delay_seconds": nullable(NUMBER),
            "reading_age_seconds": nullable(NUMBER),
            "stale": {"type": "boolean", "description": "No fresh reading of the load: the door stays open"},
            "max_decision_delay_seconds": NUMBER,
            "max_in_flight": INTEGER,
        },
        description="Admission control: orders in flight over the decision rate (the wait a new order "
                    "faces) against ORION_MAX_DECISION_DELAY, and orders in flight against ORION_MAX_IN_FLIGHT",
    ),
    "Ready": obj({"status": {"const": "ready"}, "admission": schema_ref("Admission")}),
    "NotReady": obj({
        "status": {"const": "unavailable"}, "missing": {"type": "array", "minItems": 1, "items": STRING},
        "admission": schema_ref("Admission"),
    }),
}

ORDER_EXAMPLE = {"lines": [{"sku": "SKU-001", "quantity": 2}], "payment": {"token": "tok_ok"}, "email": "sarah@example.com"}

PATHS: dict[str, Any] = {
    "/v1/orders": {
        "post": v1(
            "placeOrder", "Place an order", tag="orders", scope="orders:write", roles="customer, admin",
            description="202 once the OrderPlaced event is in Kafka. With `wait`, holds the answer up to that "
                        "many seconds and answers 200 with the order once it is decided (no longer PENDING). "
                        "An `Idempotency-Key` makes a retry return the same order.",
            parameters=[
                {"name": "wait", "in": "query", "required": False,
                 "description": "Seconds to wait for the order to be decided",
                 "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT}},
                {"name": "Idempotency-Key", "in": "header", "required": False,
                 "description": "Retries with the same key (per user) and request return the same order; "
                                "the same key with another request is a 422, and so is a key that is not UTF-8",
                 "schema": {"type": "string", "minLength": 1, "maxLength": 200}},
            ],
            request_body=json_body("OrderRequest", ORDER_EXAMPLE),
            responses={
                "200": json_response("Decided within `wait` seconds", schema_ref("Order")),
                "202": json_response("Accepted: the order is PENDING", schema_ref("OrderAccepted")),
                **BODY_PROBLEMS,
                "422": problem(422, "Invalid fields, unknown SKUs, a bad `wait`, a bad or reused Idempotency-Key, "
                                    "or text with U+0000 or unpaired surrogates"),
                "429": rate_limited(),
                "503": problem(503, "Admission control: orders wait too long for a decision or too many are "
                                    "in flight, so this one is refused before anything is written or sent "
                                    "(an Idempotency-Key retry of an accepted order never is); or Kafka could "
                                    "not be reached. Safe to retry after Retry-After seconds", {
                    **RETRY_AFTER, "Retry-After": {**RETRY_AFTER["Retry-After"], "required": True},
                }),
            },
        ),
        "get": v1(
            "listOrders", "Your orders, newest first (admins and services: everyone's)", tag="orders", scope="orders:read",
            parameters=[
                {"name": "status", "in": "query", "required": False, "schema": {"type": "string", "enum": STATUSES}},
                {"name": "limit", "in": "query", "required": False, "description": LIMIT,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                CURSOR,
                {"name": "user_id", "in": "query", "required": False, "schema": STRING,
                 "description": "Admins and services: one user's orders; ignored for everyone else"},
            ],
            responses={
                "200": json_response("A page of orders", schema_ref("OrderPage")),
                "422": problem(422, "A bad `status`, `limit` or `cursor`"),
            },
        ),
    },
    "/v1/orders/{order_id}": {
        "parameters": [ORDER_ID],
        "get": v1(
            "getOrder", "One order (owner, admin, service)", tag="orders", scope="orders:read",
            responses={
                "200": json_response("The order", schema_ref("Order")),
                "404": problem(404, "No such order, or someone else's"),
            },
        ),
    },
    "/v1/orders/{order_id}/events": {
        "parameters": [ORDER_ID],
        "get": v1(
            "listOrderEvents", "The order's audit trail, oldest first", tag="orders", scope="orders:read",
            responses={
                "200": json_response("Every audit entry", schema_ref("OrderEventList")),
                "404": problem(404, "No such order, or someone else's"),
            },
        ),
    },
    "/v1/orders/{order_id}/cancel": {
        "parameters": [ORDER_ID],
        "post": v1(
            "cancelOrder", "Cancel an order", tag="orders", scope="orders:write",
            responses={
                "202": json_response("Cancelling (or already cancelled)", schema_ref("CancelAccepted")),
                "404": problem(404, "No such order, or someone else's"),
                "409": problem(409, "The order is fulfilled, rejected or its payment failed"),
                "503": unavailable("Kafka could not be reached"),
            },
        ),
    },
    "/v1/orders/{order_id}/fulfil": {
        "parameters": [ORDER_ID],
        "post": v1(
            "fulfilOrder", "Mark a CONFIRMED order fulfilled", tag="orders", scope="orders:fulfil",
            roles="admin, service",
            responses={
                "202": json_response("Fulfilling (or already fulfilled)", schema_ref("FulfilAccepted")),
                "404": problem(404, "No such order"),
                "409": problem(409, "The order is not CONFIRMED"),
                "503": unavailable("Kafka could not be reached"),
            },
        ),
    },
    "/v1/orders/{order_id}/notifications": {
        "parameters": [ORDER_ID],
        "get": v1(
            "listOrderNotifications", "Every email queued for the order, oldest first", tag="notifications",
            scope="orders:read",
            responses={
                "200": json_response("The order's emails", schema_ref("NotificationList")),
                "404": problem(404, "No such order, or someone else's"),
            },
        ),
    },
    "/v1/notifications/{notification_id}": {
        "parameters": [NOTIFICATION_ID],
        "get": v1(
            "getNotification", "One email's delivery record", tag="notifications", roles="admin",
            responses={
                "200": json_response("The delivery record", schema_ref("Notification")),
                "404": problem(404, "No such notification"),
            },
        ),
    },
    "/v1/notifications/{notification_id}/retry": {
        "parameters": [NOTIFICATION_ID],
        "post": v1(
            "retryNotification", "Send a failed email again with a fresh count of attempts",
            tag="notifications", roles="admin",
            responses={
                "202": json_response("Queued again", schema_ref("Notification")),
                "404": problem(404, "No such notification"),
                "409": problem(409, "The email is not failed (sent, or still being tried)"),
            },
        ),
    },
    "/v1/products": {
        "get": v1(
            "listProducts", "The catalog", tag="catalog", scope="inventory:read",
            responses={"200": json_response("Every product", schema_ref("ProductList"))},
        ),
    },
    "/v1/products/{sku}": {
        "parameters": [SKU],
        "get": v1(
            "getProduct", "One product", tag="catalog", scope="inventory:read",
            responses={
                "200": json_response("The product", schema_ref("Product")),
                "404": problem(404, "No such product"),
            },
        ),
    },
    "/v1/inventory": {
        "get": v1(
            "listStock", "Every stock level, by SKU", tag="inventory", scope="inventory:read",
            roles="admin, service",
            parameters=[
                {"name": "limit", "in": "query", "required": False, "description": LIMIT,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                CURSOR,
            ],
            responses={
                "200": json_response("A page of stock levels", schema_ref("StockPage")),
                "422": problem(422, "A bad `limit` or `cursor`"),
            },
        ),
    },
    "/v1/inventory/{sku}": {
        "parameters": [SKU],
        "get": v1(
            "getStock", "One SKU's stock level", tag="inventory", scope="inventory:read",
            responses={
                "200": json_response("The stock level", schema_ref("StockLevel")),
                "404": problem(404, "No stock record for this SKU"),
            },
        ),
    },
    "/v1/inventory/{sku}/adjustments": {
        "parameters": [SKU],
        "post": v1(
            "adjustStock", "Add or remove stock", tag="inventory", scope="inventory:write",
            roles="admin, service",
            description="Waits up to 10 s for the SKU's owner to apply the adjustment: 200 with the new "
                        "level, else 202 (still pending).",
            request_body=json_body("AdjustmentRequest", {"delta": 50, "reason": "restock", "low_stock_threshold": 20}),
            responses={
                "200": json_response("Applied", schema_ref("AdjustmentApplied")),
                "202": json_response("Sent, not applied yet", schema_ref("AdjustmentPending")),
                **BODY_PROBLEMS,
                "404": problem(404, "No such product"),
                "409": problem(409, "Available stock would go negative"),
                "422": problem(422, "Invalid fields, or text with U+0000 or unpaired surrogates"),
                "503": unavailable("Kafka could not be reached"),
            },
        ),
    },
    "/v1/api-keys": {
        "post": v1(
            "createApiKey", "Create a service API key (shown this once)", tag="api-keys", roles="admin",
            request_body=json_body("ApiKeyRequest", {"name": "shop-frontend", "scopes": ["orders:read", "orders:write"]}),
            responses={
                "201": json_response("The key and its record", schema_ref("ApiKeyCreated")),
                **BODY_PROBLEMS,
                "422": problem(422, "Invalid fields, or text with U+0000 or unpaired surrogates"),
            },
        ),
        "get": v1(
            "listApiKeys", "Every API key (never the keys themselves)", tag="api-keys", roles="admin",
            responses={"200": json_response("Every key's record", schema_ref("ApiKeyList"))},
        ),
    },
    "/v1/api-keys/{key_id}": {
        "parameters": [path_param("key_id", "The API key's id")],
        "get": v1(
            "getApiKey", "One API key's record", tag="api-keys", roles="admin",
            responses={
                "200": json_response("The record", schema_ref("ApiKey")),
                "404": problem(404, "No such API key"),
            },
        ),
        "delete": v1(
            "revokeApiKey", "Revoke an API key (idempotent; it stops working at once)", tag="api-keys",
            roles="admin",
            responses={
                "200": json_response("The revoked key's record", schema_ref("ApiKey")),
                "404": problem(404, "No such API key"),
            },
        ),
    },
    "/v1/ws": {
        "get": {
            "operationId": "liveUpdates",
            "tags": ["live"],
            "summary": "Live order and stock updates over a WebSocket",
            "description": "Needs a WebSocket upgrade. A refused token still gets the upgrade, then a close "
                           "with code 4401 and the reason. Messages are described in README.md.",
            "security": [{"bearerAuth": []}, {"wsToken": []}],
            "parameters": [
                ref("parameters", "CorrelationId"),
                {"name": "sync", "in": "query", "required": False, "schema": STRING,
                 "description": "1, true or yes: send the open orders as snapshots first"},
            ],
            "responses": {
                "400": problem(400, "The path or query contains U+0000"),
                "101": {"description": "Switching to the WebSocket protocol",
                        "headers": {CORRELATION_ID: _correlation_header()}},
                "426": problem(426, "Not a WebSocket upgrade request", {
                    "Upgrade": {"description": "websocket", "schema": {"const": "websocket"}},
                }),
            },
        },
    },
    "/health": {
        "get": {
            "operationId": "health", "tags": ["operations"], "summary": "Liveness", "security": [],
            "parameters": [ref("parameters", "CorrelationId")],
            "responses": {
                "200": json_response("The process serves HTTP and makes progress", schema_ref("Health")),
                "503": problem(503, "Alive but stuck (table recovery unfinished past ORION_RECOVERY_STALL): restart it"),
            },
        },
    },
    "/ready": {
        "get": {
            "operationId": "ready", "tags": ["operations"],
            "summary": "Readiness: table recovery done, PostgreSQL and Kafka reachable", "security": [],
            "parameters": [ref("parameters", "CorrelationId")],
            "responses": {
                "200": json_response("Ready", schema_ref("Ready")),
                "503": json_response("Not ready, with what is missing", schema_ref("NotReady")),
            },
        },
    },
    "/metrics": {
        "get": {
            "operationId": "metrics", "tags": ["operations"], "summary": "Prometheus metrics", "security": [],
            "parameters": [ref("parameters", "CorrelationId")],
            "responses": {
                "200": {
                    "description": "The Prometheus text exposition format",
                    "headers": {CORRELATION_ID: _correlation_header()},
                    "content": {"text/plain": {"schema": STRING}},
                },
            },
        },
    },
    PATH: {
        "get": {
            "operationId": "openapi", "tags": ["operations"], "summary": "This document", "security": [],
            "parameters": [ref("parameters", "CorrelationId")],
            "responses": {"200": json_response("The OpenAPI 3.1 document", {"type": "object"})},
        },
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Orion",
        "version": VERSION,
        "description": "Event-driven orders and inventory. Errors are application/problem+json (RFC 9457); "
                       "every response carries X-Correlation-ID. Amounts are integer minor units.",
        "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
    },
    "tags": [{"name": name} for name in ("orders", "catalog", "inventory", "notifications", "api-keys", "live",
                                                       "operations")],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "parameters": {
            "CorrelationId": {
                "name": CORRELATION_ID, "in": "header", "required": False,
                "description": "Echoed back and carried through Kafka when it matches "
                               "^[A-Za-z0-9._:-]{1,128}$; otherwise a new id is made",
                "schema": STRING,
            },
        },
        "headers": {
            CORRELATION_ID: {
                "description": "The request's correlation id (the caller's, or a new one)",
                "required": True,
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:\\-]{1,128}$"},
            },
        },
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                           "description": "Claims sub, roles (customer, admin, service) and exp"},
            "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                           "description": "A service API key (role service); an operation that takes keys names "
                                          "the scope it needs in its security requirement. An X-API-Key header "
                                          "is used instead of Authorization when both are sent."},
            "wsToken": {"type": "apiKey", "in": "query", "name": "token",
                        "description": "The JWT as a query parameter (browsers cannot set headers on /v1/ws)"},
        },
    },
}

_BODY = json.dumps(DOCUMENT).encode()


def document() -> dict[str, Any]:
    """A copy of the OpenAPI document (callers may change it freely)."""
    return copy.deepcopy(DOCUMENT)


@app.page(PATH)
class OpenApiView(View):
    """Serves the document (the same bytes every time)."""

    async def get(self, request: web.Request) -> web.Response:
        """The OpenAPI document; no authentication."""
        return web.Response(body=_BODY, content_type=JSON)
