"""`GET /openapi.json` is a valid OpenAPI 3.1 document that covers every route, and the running
worker keeps to it: schemathesis sends generated requests (valid and invalid) to every
operation and checks status codes, content types, headers and bodies against the document.
Concrete requests then reach what random ones cannot (existing orders, emails, bad
credentials, the rate limit, each API-key scope) and are validated the same way.

What the fuzzer may touch, since the session worker shares its database with other tests:
operations that change stock or API keys (adjustments, creating and revoking keys) are fuzzed
with a customer token only, so they answer 403; orders are placed by users of their own
(`openapi-fuzz-*`, rotated to stay under the per-user order rate limit), and a test after the
fuzzer waits until every one of them is decided and cancels any that hold stock. Stock is
added only to fresh test SKUs; the API keys the scope test creates are revoked. The WebSocket
is not fuzzed (an upgrade, not a request and response).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import requests
import schemathesis
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from orion_streams import schemas
from orion_streams.schemas import SCOPES
from orion_streams.web import openapi, ws

from .harness import Services, Worker, wait_until

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Generated cases per operation in the fuzzing phase (the examples and coverage phases add a
# few deterministic ones): about 20 s for the whole API on two cores. Raise it for a longer run.
MAX_EXAMPLES = int(os.environ.get("ORION_FUZZ_EXAMPLES", "100"))
FUZZ_USER = "openapi-fuzz"
# Orders are rate limited per user (ORION_ORDER_BURST=30 in the session worker).
ORDERS_PER_FUZZ_USER = 20
# Fuzzed with a customer token only (403): they would change stock or API keys other tests see.
CUSTOMER_ONLY = {
    ("POST", "/v1/inventory/{sku}/adjustments"),
    ("POST", "/v1/api-keys"),
    ("DELETE", "/v1/api-keys/{key_id}"),
}
_fuzz_users: set[str] = set()
_calls = itertools.count()


def _config() -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "generation": {
            "mode": "all",
            "max-examples": MAX_EXAMPLES,
            "no-shrink": True,
            "database": "none",
            # Credentials are ours (below); no generated Authorization or X-API-Key headers.
            "with-security-parameters": False,
        },
        "phases": {"stateful": {"enabled": False}},
        "request-timeout": 45,
    })


@pytest.fixture(scope="module")
def token_for(services: Services) -> Callable[[str, tuple[str, ...]], str]:
    cache: dict[tuple[str, tuple[str, ...]], str] = {}

    def token(subject: str, roles: tuple[str, ...]) -> str:
        if (subject, roles) not in cache:
            cache[subject, roles] = services.token(subject, roles)
        return cache[subject, roles]

    return token


def _walk(node: Any, path: str = "#") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method != "parameters":
                yield path, method.upper(), op


# (a) The document


def test_document_is_valid_openapi_3_1() -> None:
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1.")
    # schemathesis validates against the official OpenAPI 3.1 schema (its bundled copy).
    schemathesis.openapi.from_dict(doc).validate()
    refs = [(where, node["$ref"]) for where, node in _walk(doc) if isinstance(node, dict) and "$ref" in node]
    assert refs
    for where, ref in refs:
        assert ref.startswith("#/components/"), where
        _resolve(doc, ref)  # raises KeyError when dangling
    for name, schema in doc["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
        for _, node in _walk(schema):
            if isinstance(node, dict) and isinstance(node.get("pattern"), str):
                re.compile(node["pattern"])  # Python's engine reads it too
    # The whitespace class is exactly Python's `\s` (what str.strip() strips), in any regex engine.
    ws_class = re.compile(f"[{schemas.WHITESPACE}]")
    python_ws = re.compile(r"\s")
    assert all(bool(ws_class.match(chr(c))) == bool(python_ws.match(chr(c))) for c in range(0x3100))


def test_document_describes_every_route_and_nothing_else(tmp_path: Path) -> None:
    from orion_streams.app import create_app
    from orion_streams.config import Settings

    app = create_app(Settings(state_dir=tmp_path)).app
    served = {
        (route.resource.canonical, route.method)
        for route in app.web.web_app.router.routes()  # type: ignore[attr-defined]
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(path, method) for path, method, _ in _operations(openapi.document())}
    assert documented == served, {"undocumented": served - documented, "not served": documented - served}


def test_every_operation_states_auth_parameters_and_problems() -> None:
    doc = openapi.document()
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(ids) == len(set(ids))
    for path, method, op in _operations(doc):
        where = f"{method} {path}"
        names = set(re.findall(r"{(\w+)}", path))
        declared = {p["name"] for p in doc["paths"][path].get("parameters", []) if p["in"] == "path"}
        assert names == declared, where
        if path.startswith("/v1/") and path != ws.PATH:
            # A JWT, or (where the views take keys) an API key with the one scope they check.
            assert op["security"][0] == {"bearerAuth": []}, where
            for alternative in op["security"][1:]:
                (scopes,) = alternative.values()
                assert list(alternative) == ["apiKeyAuth"] and len(scopes) == 1 and scopes[0] in SCOPES, where
            assert {"401", "403"} <= set(op["responses"]), where
        elif path != ws.PATH:
            assert op["security"] == [], where
        for status, response in op["responses"].items():
            assert response["headers"]["X-Correlation-ID"] == {"$ref": "#/components/headers/X-Correlation-ID"}, where
            content = response.get("content", {})
            if int(status) >= 400 and path not in ("/ready",):
                assert list(content) == ["application/problem+json"], (where, status)
    order = doc["components"]["schemas"]["OrderRequest"]
    assert order["additionalProperties"] is False
    assert order["properties"]["lines"]["minItems"] == 1 and order["properties"]["lines"]["maxItems"] == 50


def test_the_worker_serves_the_document_without_auth(worker: Worker) -> None:
    response = requests.get(f"{worker.url}{openapi.PATH}", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["X-Correlation-ID"]
    assert response.json() == json.loads(json.dumps(openapi.document()))


# (b) The worker keeps to it

# The document the worker serves (test_the_worker_serves_the_document_without_auth checks that
# it is this one), loaded at collection so each operation is a test of its own; requests go to
# the session worker (`base_url`). schemathesis' `from_fixture` needs a pytest older than 9.2.
schema = schemathesis.openapi.from_dict(openapi.document(), config=_config()).exclude(path=ws.PATH)


def _token(case: Case[Any], token_for: Callable[[str, tuple[str, ...]], str]) -> str:
    """Whose token a generated case carries: see the module docstring."""
    n = next(_calls)
    key = (case.method.upper(), case.path)
    if key == ("POST", "/v1/orders"):
        user = f"{FUZZ_USER}-{n // ORDERS_PER_FUZZ_USER}"
        _fuzz_users.add(user)
        return token_for(user, ("customer",))
    if key in CUSTOMER_ONLY or key == ("POST", "/v1/orders/{order_id}/cancel"):
        _fuzz_users.add(FUZZ_USER)
        return token_for(FUZZ_USER, ("customer",))
    # Everything else in turn as an admin (who sees everything) and as a customer.
    return token_for("mike", ("admin",)) if n % 2 else token_for(FUZZ_USER, ("customer",))


@schema.parametrize()
def test_the_worker_keeps_to_its_document(
    case: Case[Any], worker: Worker, token_for: Callable[[str, tuple[str, ...]], str],
) -> None:
    headers = {"Authorization": f"Bearer {_token(case, token_for)}"}
    case.call_and_validate(base_url=worker.url, headers=headers, checks=CHECKS)


def test_fuzzed_orders_are_all_decided(worker: Worker, token_for: Callable[[str, tuple[str, ...]], str]) -> None:
    """Every order the fuzzer placed gets decided (nothing it sent stalls the pipeline), and
    those that hold stock are cancelled, so other tests find the stock they expect."""
    admin = {"Authorization": f"Bearer {token_for('mike', ('admin',))}"}
    listing = schema["/v1/orders"]["GET"]

    def orders(*statuses: str) -> list[dict[str, Any]]:
        found = []
        for user in sorted(_fuzz_users):
            for status in statuses:
                response = listing.Case(query={"user_id": user, "status": status, "limit": 100}).call_and_validate(
                    base_url=worker.url, headers=admin, checks=CHECKS)
                assert response.status_code == 200, response.text
                found.extend(response.json()["items"])
        return found

    wait_until(lambda: not orders("PENDING", "RESERVED"), 30, "every fuzzed order to be decided")
    cancel = schema["/v1/orders/{order_id}/cancel"]["POST"]
    for order in orders("CONFIRMED"):
        response = cancel.Case(path_parameters={"order_id": order["order_id"]}).call_and_validate(
            base_url=worker.url, headers=admin, checks=CHECKS)
        assert response.status_code == 202, response.text


def test_success_responses_keep_to_the_document(
    worker: Worker, token_for: Callable[[str, tuple[str, ...]], str], fresh_sku: Callable[[], str],
) -> None:
    """The fuzzer rarely guesses an existing id, so walk one order through its life with
    concrete requests and validate every answer (200s and 202s) the same way."""
    admin = {"Authorization": f"Bearer {token_for('mike', ('admin',))}"}
    owner = {"Authorization": f"Bearer {token_for('openapi-owner', ('customer',))}"}

    def call(path: str, method: str, who: dict[str, str], expect: set[int], **data: Any) -> Any:
        if "body" in data:
            data["media_type"] = "application/json"
        case = schema[path][method].Case(**data)
        response = case.call_and_validate(base_url=worker.url, headers=who, checks=CHECKS)
        assert response.status_code in expect, (method, path, response.status_code, response.text)
        content_type = response.headers.get("content-type", [""])[0]
        return response.json() if "json" in content_type else response.text

    sku = fresh_sku()
    level = call("/v1/inventory/{sku}/adjustments", "POST", admin, {200}, path_parameters={"sku": sku},
                 body={"delta": 5, "reason": "restock", "low_stock_threshold": 1})["level"]
    assert level["available"] == 5
    call("/v1/inventory/{sku}/adjustments", "POST", admin, {200}, path_parameters={"sku": fresh_sku()},
         body={"delta": 1, "reason": "correction", "low_stock_threshold": None})
    body = {"lines": [{"sku": sku, "quantity": 1}], "payment": {"token": "tok_ok"}, "email": "owner@example.com"}
    key = {"Idempotency-Key": f"openapi-{time.time_ns()}"}
    order = call("/v1/orders", "POST", owner, {200}, query={"wait": 15}, headers=key, body=body)
    assert order["status"] == "CONFIRMED" and order["lines"][0]["sku"] == sku
    order_id = order["order_id"]
    again = call("/v1/orders", "POST", owner, {200}, query={"wait": 1}, headers=key, body=body)
    assert again["order_id"] == order_id
    call("/v1/orders", "POST", owner, {422}, headers=key, body={**body, "email": "other@example.com"})
    ids = {"order_id": order_id}
    call("/v1/orders/{order_id}", "GET", owner, {200}, path_parameters=ids)
    assert call("/v1/orders/{order_id}/events", "GET", owner, {200}, path_parameters=ids)["items"]

    notes: list[dict[str, Any]] = []

    def emails() -> bool:
        notes[:] = call("/v1/orders/{order_id}/notifications", "GET", owner, {200}, path_parameters=ids)["items"]
        return bool(notes)

    wait_until(emails, 20, "the order's emails to be queued")
    note = {"notification_id": notes[0]["id"]}
    call("/v1/notifications/{notification_id}", "GET", admin, {200}, path_parameters=note)
    call("/v1/notifications/{notification_id}/retry", "POST", admin, {202, 409}, path_parameters=note)

    call("/v1/products", "GET", owner, {200})
    call("/v1/products/{sku}", "GET", owner, {200}, path_parameters={"sku": sku})
    call("/v1/inventory/{sku}", "GET", owner, {200}, path_parameters={"sku": sku})
    page = call("/v1/inventory", "GET", admin, {200}, query={"limit": 1})
    assert isinstance(page["next_cursor"], str)
    call("/v1/inventory", "GET", admin, {200}, query={"limit": 2, "cursor": page["next_cursor"]})
    call("/v1/api-keys", "GET", admin, {200})

    call("/v1/orders/{order_id}/fulfil", "POST", admin, {202}, path_parameters=ids)
    call("/v1/orders/{order_id}/cancel", "POST", owner, {202, 409}, path_parameters=ids)
    second = call("/v1/orders", "POST", owner, {202}, body=body)
    cancelled = call("/v1/orders/{order_id}/cancel", "POST", owner, {202}, path_parameters={"order_id": second["order_id"]})
    assert cancelled["status"] == "CANCELLING"
    first = call("/v1/orders", "GET", owner, {200}, query={"limit": 1})
    assert len(first["items"]) == 1 and isinstance(first["next_cursor"], str)
    rest = call("/v1/orders", "GET", owner, {200}, query={"limit": 5, "cursor": first["next_cursor"]})
    assert [o["order_id"] for o in rest["items"]] == [order_id]
    call("/v1/orders", "GET", admin, {200}, query={"user_id": "openapi-owner", "status": "CONFIRMED"})
    wait_until(lambda: call("/v1/orders/{order_id}", "GET", owner, {200}, path_parameters={"order_id": second["order_id"]})[
        "status"] == "CANCELLED", 20, "the second order to be cancelled")
    call("/v1/orders/{order_id}/cancel", "POST", owner, {202}, path_parameters={"order_id": second["order_id"]})

    assert call("/health", "GET", {}, {200})["status"] == "ok"
    assert call("/ready", "GET", {}, {200})["status"] == "ready"
    assert "orion_orders_accepted_total" in call("/metrics", "GET", {}, {200})


def test_error_responses_keep_to_the_document(
    worker: Worker, token_for: Callable[[str, tuple[str, ...]], str],
) -> None:
    """Answers the fuzzer never provokes with a valid token: bad credentials, refused bodies,
    a role that is missing and the order rate limit, sent as raw requests and validated."""

    def check(method: str, path: str, expect: int, params: dict[str, str] | None = None,
              **kwargs: Any) -> requests.Response:
        url = f"{worker.url}{path.format(**(params or {}))}"
        response = requests.request(method, url, timeout=30, **kwargs)
        assert response.status_code == expect, (method, url, response.status_code, response.text)
        schema[path][method].Case(path_parameters=params).validate_response(response, checks=CHECKS)
        return response

    customer = {"Authorization": f"Bearer {token_for(FUZZ_USER, ('customer',))}"}
    admin = {"Authorization": f"Bearer {token_for('mike', ('admin',))}"}
    as_json = {**admin, "Content-Type": "application/json"}
    check("GET", "/v1/orders", 401)
    response = check("GET", "/v1/products", 401, headers={"Authorization": "Bearer not-a-jwt"})
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    check("GET", "/v1/products", 401, headers={"X-API-Key": "orion_not-a-key"})
    check("GET", "/v1/inventory", 403, headers=customer)
    adjust, sku = "/v1/inventory/{sku}/adjustments", {"sku": "NO-SUCH-SKU"}
    check("POST", adjust, 415, sku, headers={**admin, "Content-Type": "text/plain"}, data=b'{"delta": 1}')
    check("POST", adjust, 400, sku, headers=as_json, data=b"{")
    check("POST", adjust, 400, sku, headers=as_json, data=b"[" * 100_000 + b"]" * 100_000)
    check("POST", adjust, 413, sku, headers=as_json, data=b'"' + b"x" * 300_000 + b'"')
    check("POST", adjust, 404, sku, headers=admin, json={"delta": 1, "reason": "restock"})
    body = {"lines": [{"sku": "SKU-001", "quantity": 1}], "payment": {"token": "tok_ok"}, "email": "a\u0000@example.com"}
    response = check("POST", "/v1/orders", 422, headers=customer, json=body)
    assert [e["field"] for e in response.json()["errors"]] == ["body"]
    limited = {"Authorization": f"Bearer {token_for('openapi-rate-limited', ('customer',))}"}
    for _ in range(100):  # ORION_ORDER_BURST=30 in the session worker; `{}` costs a token too
        response = requests.post(f"{worker.url}/v1/orders", json={}, headers=limited, timeout=30)
        if response.status_code == 429:
            break
        assert response.status_code == 422, response.text
    response = check("POST", "/v1/orders", 429, headers=limited, json={})
    assert int(response.headers["Retry-After"]) >= 1


def test_api_keys_reach_exactly_the_operations_that_name_their_scope(
    worker: Worker, token_for: Callable[[str, tuple[str, ...]], str],
) -> None:
    """One key per scope: each gets past authorisation (no 403) exactly where the document's
    security requirement names its scope. The keys are revoked at the end; every request
    names ids that do not exist, so nothing else changes."""
    admin = {"Authorization": f"Bearer {token_for('mike', ('admin',))}"}
    doc = openapi.document()

    def call(path: str, method: str, who: dict[str, str], **data: Any) -> Any:
        if "body" in data:
            data["media_type"] = "application/json"
        response = schema[path][method].Case(**data).call_and_validate(base_url=worker.url, headers=who, checks=CHECKS)
        return response.status_code, response.json()

    keys: dict[str, tuple[str, str]] = {}
    try:
        for scope in sorted(SCOPES):
            status, created = call("/v1/api-keys", "POST", admin, body={"name": f"openapi {scope}", "scopes": [scope]})
            assert status == 201 and created["scopes"] == [scope], created
            keys[scope] = (created["id"], created["key"])
        for path, method, op in _operations(doc):
            if not path.startswith("/v1/") or path == ws.PATH:
                continue
            wanted = {scope for alternative in op["security"] for scope in alternative.get("apiKeyAuth", [])}
            params = {name: "openapi-no-such-id" for name in re.findall(r"{(\w+)}", path)}
            body: dict[str, Any] = {"body": {}} if "requestBody" in op else {}
            for scope, (_, key) in keys.items():
                status, answer = call(path, method, {"X-API-Key": key}, path_parameters=params, **body)
                assert (status == 403) == (scope not in wanted), (method, path, scope, status, answer)
    finally:
        for key_id, _ in keys.values():
            status, record = call("/v1/api-keys/{key_id}", "DELETE", admin, path_parameters={"key_id": key_id})
            assert status == 200 and record["active"] is False, record
    for key_id, _ in keys.values():
        status, record = call("/v1/api-keys/{key_id}", "GET", admin, path_parameters={"key_id": key_id})
        assert status == 200 and record["revoked_at"], record
