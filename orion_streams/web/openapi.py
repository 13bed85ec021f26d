"""`GET /openapi.json`: the OpenAPI 3.1 description of the HTTP API, served without auth.

Every request body, query parameter and response body is described by the pydantic models in
`schemas.py`, the ones the views validate with: component schemas are their JSON Schema
(2020-12, which OpenAPI 3.1 takes as it is), so the document and the checks cannot disagree.
What is written here, next to the views, is the rest: operations, every status each view can
return, auth, headers, and problem+json errors as `problems.py` builds them.
`tests/integration/test_openapi.py` checks the document against the OpenAPI 3.1 meta-schema
and the router, and fuzzes the running worker with it (schemathesis).
"""

from __future__ import annotations

import copy
import json
from http import HTTPStatus
from typing import Any

from aiohttp import web
from faust.web import View
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from .. import schemas
from . import console
from .middleware import CORRELATION_ID

PATH = "/openapi.json"
VERSION = "1.0.0"
JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
REF = "#/components/schemas/{model}"

# Titles of the problems Orion raises (problems.py, views.py, ws.py); a 413 comes from aiohttp
# with the reason phrase of the Python it runs on, so its title is left open (and 422 has its
# own schema).
TITLES = {status: HTTPStatus(status).phrase for status in (400, 401, 403, 404, 409, 415, 426, 429, 503)}


def ref(kind: str, name: str) -> dict[str, str]:
    """A `$ref` to `#/components/<kind>/<name>`."""
    return {"$ref": f"#/components/{kind}/{name}"}


def schema_ref(model: type[BaseModel]) -> dict[str, str]:
    """A `$ref` to a model's component schema."""
    return {"$ref": REF.format(model=model.__name__)}


class _Untitled(GenerateJsonSchema):
    """pydantic's JSON schema without a title for every field (its name says it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def components() -> dict[str, Any]:
    """Every body model of `schemas` (and what they use) as component schemas."""
    models = [m for m in vars(schemas).values() if isinstance(m, type) and issubclass(m, schemas.Body)]
    _, defs = models_json_schema(
        [(m, "validation") for m in models if m.model_fields], ref_template=REF, schema_generator=_Untitled
    )
    for schema in defs["$defs"].values():
        schema.pop("title", None)
    return dict(sorted(defs["$defs"].items()))


def query(model: type[schemas.Query]) -> list[dict[str, Any]]:
    """The query parameters a view reads with `model`."""
    schema = model.model_json_schema(ref_template=REF, schema_generator=_Untitled)
    out = []
    for name, prop in schema["properties"].items():
        if "default" in prop and prop["default"] is None:
            del prop["default"]
        description = {"description": prop.pop("description")} if "description" in prop else {}
        out.append({"name": name, "in": "query", "required": name in schema.get("required", ()), **description,
                    "schema": prop})
    return out


STRING: dict[str, Any] = {"type": "string"}


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


def static_response(description: str, content: dict[str, Any]) -> dict[str, Any]:
    """A file of the console, with the page's Content-Security-Policy."""
    return {
        "description": description,
        "headers": {
            CORRELATION_ID: _correlation_header(),
            "Content-Security-Policy": {"description": "Only this origin's scripts, styles, images and "
                                                      "connections; no inline script", "schema": STRING},
        },
        "content": content,
    }


def problem(status: int, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A problem+json response with this status; only 422 lists field errors."""
    exact: dict[str, Any] = {"status": {"const": status}}
    if status in TITLES:
        title = TITLES[status]
        exact["title"] = {"const": title}
        exact["type"] = {"const": f"https://orion.dev/problems/{title.lower().replace(' ', '-')}"}
    schema = schema_ref(schemas.ValidationProblem) if status == 422 else {
        "allOf": [schema_ref(schemas.Problem), {"properties": exact}]
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


def json_body(model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    """A required application/json request body (views.read_json)."""
    return {"required": True, "content": {JSON: {"schema": schema_ref(model), "example": example}}}


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
DEAD_LETTER_ID = path_param("dead_letter_id", "The dead letter's id (<partition>-<offset>)")

ORDER_EXAMPLE = {"lines": [{"sku": "SKU-001", "quantity": 2}], "payment": {"token": "tok_ok"}, "email": "sarah@example.com"}


def build() -> dict[str, Any]:
    """The document, from the models in `schemas` as they are."""
    paths: dict[str, Any] = {
        "/v1/orders": {
            "post": v1(
                "placeOrder", "Place an order", tag="orders", scope="orders:write", roles="customer, admin",
                description="202 once the OrderPlaced event is in Kafka. With `wait`, holds the answer up to that "
                            "many seconds and answers 200 with the order once it is decided (no longer PENDING). "
                            "An `Idempotency-Key` makes a retry return the same order.",
                parameters=[
                    *query(schemas.PlaceOrderQuery),
                    {"name": "Idempotency-Key", "in": "header", "required": False,
                     "description": "Retries with the same key (per user) and request return the same order; "
                                    "the same key with another request is a 422, and so is a key that is not UTF-8",
                     "schema": {"type": "string", "minLength": 1, "maxLength": schemas.MAX_IDEMPOTENCY_KEY}},
                ],
                request_body=json_body(schemas.OrderRequest, ORDER_EXAMPLE),
                responses={
                    "200": json_response("Decided within `wait` seconds", schema_ref(schemas.Order)),
                    "202": json_response("Accepted: the order is PENDING", schema_ref(schemas.OrderAccepted)),
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
                parameters=query(schemas.OrderListQuery),
                responses={
                    "200": json_response("A page of orders", schema_ref(schemas.OrderPage)),
                    "422": problem(422, "A bad `status`, `limit` or `cursor`"),
                },
            ),
        },
        "/v1/orders/{order_id}": {
            "parameters": [ORDER_ID],
            "get": v1(
                "getOrder", "One order (owner, admin, service)", tag="orders", scope="orders:read",
                responses={
                    "200": json_response("The order", schema_ref(schemas.Order)),
                    "404": problem(404, "No such order, or someone else's"),
                },
            ),
        },
        "/v1/orders/{order_id}/events": {
            "parameters": [ORDER_ID],
            "get": v1(
                "listOrderEvents", "The order's audit trail, oldest first", tag="orders", scope="orders:read",
                responses={
                    "200": json_response("Every audit entry", schema_ref(schemas.OrderEventList)),
                    "404": problem(404, "No such order, or someone else's"),
                },
            ),
        },
        "/v1/orders/{order_id}/cancel": {
            "parameters": [ORDER_ID],
            "post": v1(
                "cancelOrder", "Cancel an order", tag="orders", scope="orders:write",
                responses={
                    "202": json_response("Cancelling (or already cancelled)", schema_ref(schemas.CancelAccepted)),
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
                    "202": json_response("Fulfilling (or already fulfilled)", schema_ref(schemas.FulfilAccepted)),
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
                    "200": json_response("The order's emails", schema_ref(schemas.NotificationList)),
                    "404": problem(404, "No such order, or someone else's"),
                },
            ),
        },
        "/v1/notifications": {
            "get": v1(
                "listFailedNotifications", "Emails given up on, the most recently failed first", tag="notifications",
                roles="admin", scope="ops", parameters=query(schemas.NotificationListQuery),
                responses={
                    "200": json_response("A page of failed emails", schema_ref(schemas.NotificationPage)),
                    "422": problem(422, "A bad status, limit or cursor"),
                },
            ),
        },
        "/v1/notifications/{notification_id}": {
            "parameters": [NOTIFICATION_ID],
            "get": v1(
                "getNotification", "One email's delivery record", tag="notifications", roles="admin", scope="ops",
                responses={
                    "200": json_response("The delivery record", schema_ref(schemas.Notification)),
                    "404": problem(404, "No such notification"),
                },
            ),
        },
        "/v1/notifications/{notification_id}/retry": {
            "parameters": [NOTIFICATION_ID],
            "post": v1(
                "retryNotification", "Send a failed email again with a fresh count of attempts",
                tag="notifications", roles="admin", scope="ops",
                responses={
                    "202": json_response("Queued again", schema_ref(schemas.Notification)),
                    "404": problem(404, "No such notification"),
                    "409": problem(409, "The email is not failed (sent, or still being tried)"),
                },
            ),
        },
        "/v1/dead-letters": {
            "get": v1(
                "listDeadLetters", "Records Orion could not process, newest first", tag="dead-letters",
                roles="admin", scope="ops", parameters=query(schemas.DeadLetterListQuery),
                description="Every record of the dead-letters topic, indexed into PostgreSQL by each worker: why it "
                            "was parked, where it came from (topic, partition, offset), its payload and its replays.",
                responses={
                    "200": json_response("A page of dead letters", schema_ref(schemas.DeadLetterPage)),
                    "422": problem(422, "A bad status, limit or cursor"),
                },
            ),
        },
        "/v1/dead-letters/replay": {
            "post": v1(
                "replayDeadLetters", "Replay a selection of dead letters to their source topics", tag="dead-letters",
                roles="admin", scope="ops", request_body=json_body(schemas.ReplayRequest, {"ids": ["3-17", "0-4"]}),
                description="Each in turn, under its row lock: sent again (same key and value, headers naming the "
                            "caller), or already_replayed (not sent twice), or refused when it would be dead-lettered "
                            "again (it does not decode, its key is not its own, the saga would refuse the order with "
                            "today's catalog, an email), or not_found. Every call on a known id is audited.",
                responses={
                    "200": json_response("Every id's outcome, in order", schema_ref(schemas.ReplayResult)),
                    **BODY_PROBLEMS,
                    "422": problem(422, "No ids, more than 100, or an id that is not a string"),
                    "503": unavailable("Kafka could not be reached (nothing was recorded)"),
                },
            ),
        },
        "/v1/dead-letters/{dead_letter_id}": {
            "parameters": [DEAD_LETTER_ID],
            "get": v1(
                "getDeadLetter", "One dead letter and its replays", tag="dead-letters", roles="admin", scope="ops",
                responses={
                    "200": json_response("The dead letter", schema_ref(schemas.DeadLetter)),
                    "404": problem(404, "No such dead letter"),
                },
            ),
        },
        "/v1/dead-letters/{dead_letter_id}/replay": {
            "parameters": [DEAD_LETTER_ID],
            "post": v1(
                "replayDeadLetter", "Replay one dead letter to its source topic", tag="dead-letters",
                roles="admin", scope="ops",
                description="As replayDeadLetters for one id: 200 when sent now or sent before (outcome says which).",
                responses={
                    "200": json_response("Replayed, or replayed before", schema_ref(schemas.ReplayOutcome)),
                    "404": problem(404, "No such dead letter"),
                    "422": problem(422, "Refused: it would be dead-lettered again, or it is not a record of a topic"),
                    "503": unavailable("Kafka could not be reached (nothing was recorded)"),
                },
            ),
        },
        "/v1/products": {
            "get": v1(
                "listProducts", "The catalog", tag="catalog", scope="inventory:read",
                responses={"200": json_response("Every product", schema_ref(schemas.ProductList))},
            ),
        },
        "/v1/products/{sku}": {
            "parameters": [SKU],
            "get": v1(
                "getProduct", "One product", tag="catalog", scope="inventory:read",
                responses={
                    "200": json_response("The product", schema_ref(schemas.Product)),
                    "404": problem(404, "No such product"),
                },
            ),
        },
        "/v1/inventory": {
            "get": v1(
                "listStock", "Every stock level, by SKU", tag="inventory", scope="inventory:read",
                roles="admin, service",
                parameters=query(schemas.StockListQuery),
                responses={
                    "200": json_response("A page of stock levels", schema_ref(schemas.StockPage)),
                    "422": problem(422, "A bad `limit` or `cursor`"),
                },
            ),
        },
        "/v1/inventory/{sku}": {
            "parameters": [SKU],
            "get": v1(
                "getStock", "One SKU's stock level", tag="inventory", scope="inventory:read",
                responses={
                    "200": json_response("The stock level", schema_ref(schemas.StockLevel)),
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
                request_body=json_body(schemas.AdjustmentRequest, {"delta": 50, "reason": "restock", "low_stock_threshold": 20}),
                responses={
                    "200": json_response("Applied", schema_ref(schemas.AdjustmentApplied)),
                    "202": json_response("Sent, not applied yet", schema_ref(schemas.AdjustmentPending)),
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
                request_body=json_body(schemas.ApiKeyRequest, {"name": "shop-frontend", "scopes": ["orders:read", "orders:write"]}),
                responses={
                    "201": json_response("The key and its record", schema_ref(schemas.ApiKeyCreated)),
                    **BODY_PROBLEMS,
                    "422": problem(422, "Invalid fields, or text with U+0000 or unpaired surrogates"),
                },
            ),
            "get": v1(
                "listApiKeys", "Every API key (never the keys themselves)", tag="api-keys", roles="admin",
                responses={"200": json_response("Every key's record", schema_ref(schemas.ApiKeyList))},
            ),
        },
        "/v1/api-keys/{key_id}": {
            "parameters": [path_param("key_id", "The API key's id")],
            "get": v1(
                "getApiKey", "One API key's record", tag="api-keys", roles="admin",
                responses={
                    "200": json_response("The record", schema_ref(schemas.ApiKey)),
                    "404": problem(404, "No such API key"),
                },
            ),
            "delete": v1(
                "revokeApiKey", "Revoke an API key (idempotent; it stops working at once)", tag="api-keys",
                roles="admin",
                responses={
                    "200": json_response("The revoked key's record", schema_ref(schemas.ApiKey)),
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
                    "200": json_response("The process serves HTTP and makes progress", schema_ref(schemas.Health)),
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
                    "200": json_response("Ready", schema_ref(schemas.Ready)),
                    "503": json_response("Not ready, with what is missing", schema_ref(schemas.NotReady)),
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
        "/console": {
            "get": {
                "operationId": "console", "tags": ["operations"], "summary": "The ops console (one HTML page)",
                "description": "No authentication: the page asks for an admin JWT or an API key with the scope "
                               "ops and sends it with its own calls to /v1 and /v1/ws.",
                "security": [], "parameters": [ref("parameters", "CorrelationId")],
                "responses": {
                    "200": static_response("The page", {"text/html": {"schema": STRING}}),
                    "400": problem(400, "The path or query contains U+0000"),
                },
            },
        },
        "/console/{name}": {
            "parameters": [path_param(
                "name", "One of " + ", ".join(n for n in console.FILES if n != console.INDEX) + " (or index.html)")],
            "get": {
                "operationId": "consoleFile", "tags": ["operations"], "summary": "The console's stylesheet, script "
                "and icon", "security": [],
                "parameters": [ref("parameters", "CorrelationId")],
                "responses": {
                    "200": static_response("The file", {
                        "text/css": {"schema": STRING}, "text/javascript": {"schema": STRING},
                        "image/svg+xml": {"schema": STRING}, "text/html": {"schema": STRING},
                    }),
                    "400": problem(400, "The path or query contains U+0000"),
                    "404": problem(404, "Not one of the console's files"),
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
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Orion",
            "version": VERSION,
            "description": "Event-driven orders and inventory. Errors are application/problem+json (RFC 9457); "
                           "every response carries X-Correlation-ID. Amounts are integer minor units.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": name} for name in ("orders", "catalog", "inventory", "notifications", "dead-letters", "api-keys",
                                             "live", "operations")],
        "paths": paths,
        "components": {
            "schemas": components(),
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


DOCUMENT = build()
_BODY = json.dumps(DOCUMENT).encode()


def document() -> dict[str, Any]:
    """A copy of the OpenAPI document (callers may change it freely)."""
    return copy.deepcopy(DOCUMENT)


class OpenApiView(View):
    """Serves the document (the same bytes every time)."""

    async def get(self, request: web.Request) -> web.Response:
        """The OpenAPI document; no authentication."""
        return web.Response(body=_BODY, content_type=JSON)


ROUTES: tuple[tuple[str, type[View]], ...] = ((PATH, OpenApiView),)
