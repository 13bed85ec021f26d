"""The HTTP API's views (web/views.py) over real HTTP in-process, behind the API's own
middleware, with a fake read model, runtime, bus and watchdog (tests/unit/web_fakes.py):
statuses, problem+json bodies, headers and what each request sends. No broker, no database."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from orion_streams import records
from orion_streams import topics as t
from orion_streams.config import Settings
from orion_streams.domain import commands as c
from orion_streams.domain import events as e
from orion_streams.domain.catalog import Product
from orion_streams.services import orders
from orion_streams.services.admission import Load
from orion_streams.web.middleware import CORRELATION_ID
from orion_streams.web.openapi import document

from .web_fakes import (
    ALICE,
    ALL_ROUTES,
    BOB,
    BODY_LIMIT,
    Client,
    World,
    application,
    bearer,
    order_body,
    order_row,
    problem,
    serve,
    stock_row,
)

ADMIN = bearer("root", "admin")
SERVICE = bearer("svc", "service")


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def client(world: World) -> AsyncIterator[Client]:
    async with serve(world) as http:
        yield http


def close_the_door(world: World, *, in_flight: int | None = None, queue_delay: float = 0.0) -> None:
    """A fresh reading that makes admission control refuse new orders."""
    world.runtime.admission.update(Load(
        world.settings.max_in_flight if in_flight is None else in_flight, queue_delay, time.monotonic(),
    ))


# --- POST /v1/orders ------------------------------------------------------------------------


async def test_place_answers_202_and_sends_one_order_placed_keyed_by_its_id(world: World, client: Client) -> None:
    world.runtime.admission.update(Load(0, 0.0, time.monotonic()))
    accepted_before = metric("orion_orders_accepted_total")
    response = await client.post(
        "/v1/orders", json=order_body(("SKU-001", 2), ("SKU-003", 1)),
        headers={**bearer(ALICE), CORRELATION_ID: "req-42"},
    )
    assert response.status == 202
    assert response.headers[CORRELATION_ID] == "req-42"
    body = await response.json()
    order_id = body["order_id"]
    assert body == {"order_id": order_id, "status": "PENDING", "links": {"self": f"/v1/orders/{order_id}"}}
    uuid.UUID(order_id)

    assert len(world.bus.sent) == 1
    topic, key, message, _ = world.bus.sent[0]
    assert (topic, key) == ("orders", order_id) and topic == t.ORDERS.name
    assert isinstance(message, e.OrderPlaced)
    assert (message.order_id, message.user_id, message.email, message.payment_token) == (
        order_id, ALICE, "alice@example.com", "tok_ok")
    assert [(line.sku, line.quantity) for line in message.lines] == [("SKU-001", 2), ("SKU-003", 1)]
    assert world.bus.headers() == {"correlation-id": "req-42", "actor": "user:alice", "actor-roles": "customer"}
    # What the API sends is what any consumer of `orders` reads back.
    again = records.decode(records.encode(message), world.runtime.catalog)
    assert isinstance(again, e.OrderPlaced) and again.order_id == order_id

    # Pre-recorded (readable at once) with the catalog's prices, never the caller's.
    (batch,) = world.store.accepted
    (accepted,) = batch
    assert (accepted.order_id, accepted.user_id, accepted.currency, accepted.idempotency_key) == (
        order_id, ALICE, "EUR", None)
    assert accepted.lines == (("SKU-001", 2, 4_999), ("SKU-003", 1, 12_900))
    assert metric("orion_orders_accepted_total") == accepted_before + 1
    # The door counts it as in flight until the next reading.
    assert world.runtime.admission.snapshot(time.monotonic())["in_flight"] == 1


async def test_a_correlation_id_is_made_when_none_or_a_bad_one_is_given(world: World, client: Client) -> None:
    first = await client.post("/v1/orders", json=order_body(), headers=bearer(ALICE))
    second = await client.post(
        "/v1/orders", json=order_body(), headers={**bearer(ALICE), CORRELATION_ID: "no spaces\tallowed"},
    )
    assert first.status == second.status == 202
    made = [first.headers[CORRELATION_ID], second.headers[CORRELATION_ID]]
    assert all(len(cid) == 32 and int(cid, 16) >= 0 for cid in made) and made[0] != made[1]
    assert [world.bus.headers(i)["correlation-id"] for i in (0, 1)] == made


async def test_wait_answers_200_with_the_order_once_decided(world: World, client: Client) -> None:
    decided = order_row("o-decided", status="CONFIRMED")
    world.store.order_answers = [decided]
    response = await client.post("/v1/orders?wait=5", json=order_body(), headers=bearer(ALICE))
    assert response.status == 200
    assert await response.json() == decided
    assert len(world.bus.sent) == 1


async def test_wait_answers_200_for_reserved_at_the_deadline(world: World, client: Client) -> None:
    world.store.order_answers = [order_row("o-1", status="RESERVED")] * 100
    response = await client.post("/v1/orders?wait=0.05", json=order_body(), headers=bearer(ALICE))
    assert response.status == 200
    assert (await response.json())["status"] == "RESERVED"


async def test_wait_answers_202_while_the_order_is_still_pending(world: World, client: Client) -> None:
    world.store.order_answers = [order_row("o-1", status="PENDING")] * 100
    response = await client.post("/v1/orders?wait=0.05", json=order_body(), headers=bearer(ALICE))
    assert response.status == 202
    assert (await response.json())["status"] == "PENDING"


@pytest.mark.parametrize("wait", ["soon", "-1", "31", "nan", "inf"])
async def test_wait_must_be_a_number_of_seconds_up_to_30(world: World, client: Client, wait: str) -> None:
    response = await client.post(f"/v1/orders?wait={wait}", json=order_body(), headers=bearer(ALICE))
    await problem(response, 422, "wait")
    assert world.bus.sent == []


@pytest.mark.parametrize(("in_flight", "queue_delay", "reason", "retry_after"), [
    (None, 0.0, "in_flight", "2"),
    (0, 20.0, "decision_delay", "15"),
])
async def test_a_closed_door_refuses_503_with_retry_after_before_anything_else(
    world: World, client: Client, in_flight: int | None, queue_delay: float, reason: str, retry_after: str,
) -> None:
    close_the_door(world, in_flight=in_flight, queue_delay=queue_delay)
    refused = metric("orion_orders_refused_total", reason=reason)
    # No token at all: the refusal comes first and costs next to nothing.
    response = await client.post("/v1/orders", json=order_body())
    body = await problem(response, 503)
    assert response.headers["Retry-After"] == retry_after
    assert f"retry after {retry_after}s" in body["detail"]
    assert world.bus.sent == [] and world.store.accepted == []
    assert metric("orion_orders_refused_total", reason=reason) == refused + 1


async def test_a_closed_door_still_answers_a_retry_of_an_accepted_order(world: World, client: Client) -> None:
    first = await client.post("/v1/orders", json=order_body(), headers={**bearer(ALICE), "Idempotency-Key": "k-1"})
    assert first.status == 202
    close_the_door(world)
    retry = await client.post("/v1/orders", json=order_body(), headers={**bearer(ALICE), "Idempotency-Key": "k-1"})
    assert retry.status == 202
    assert (await retry.json())["order_id"] == (await first.json())["order_id"]
    # A new key is a new order: refused, nothing sent.
    new = await client.post("/v1/orders", json=order_body(), headers={**bearer(ALICE), "Idempotency-Key": "k-2"})
    await problem(new, 503)
    assert new.headers["Retry-After"] == "2"
    assert len(world.bus.sent) == 1


async def test_an_idempotency_key_places_one_order(world: World, client: Client) -> None:
    headers = {**bearer(ALICE), "Idempotency-Key": "checkout-7"}
    first = await client.post("/v1/orders", json=order_body(), headers=headers)
    second = await client.post("/v1/orders", json=order_body(), headers=headers)
    assert first.status == second.status == 202
    order_id = (await first.json())["order_id"]
    assert (await second.json())["order_id"] == order_id
    assert [(topic, key) for topic, key, *_ in world.bus.sent] == [("orders", order_id)]
    assert len(world.store.accepted) == 1
    # The same key for another request is refused; for another caller it is another order.
    other = await client.post("/v1/orders", json=order_body(("SKU-002", 1)), headers=headers)
    await problem(other, 422)
    bobs = await client.post("/v1/orders", json=order_body(), headers={**bearer(BOB), "Idempotency-Key": "checkout-7"})
    assert bobs.status == 202 and (await bobs.json())["order_id"] != order_id


async def test_an_idempotency_key_over_200_characters_is_a_field_error(world: World, client: Client) -> None:
    response = await client.post("/v1/orders", json=order_body(), headers={**bearer(ALICE), "Idempotency-Key": "k" * 201})
    await problem(response, 422, "Idempotency-Key")
    assert world.bus.sent == []


async def test_orders_beyond_the_rate_limit_get_429_with_retry_after() -> None:
    world = World(Settings(order_rate_per_minute=1, order_burst=2))
    async with serve(world) as client:
        statuses = []
        for _ in range(3):
            response = await client.post("/v1/orders", json=order_body(), headers=bearer(ALICE))
            statuses.append(response.status)
        assert statuses == [202, 202, 429]
        await problem(response, 429)
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert len(world.bus.sent) == 2
        # Another caller has a bucket of its own; a service key has the services' limits.
        assert (await client.post("/v1/orders", json=order_body(), headers=bearer(BOB))).status == 202
        key, key_id = world.runtime.api_keys.grant("shop", "orders:write")
        for _ in range(3):
            response = await client.post("/v1/orders", json=order_body(), headers={"X-API-Key": key})
            assert response.status == 202
        assert world.bus.headers(-1)["actor"] == f"service:shop/{key_id}"
        assert world.bus.sent[-1][2].user_id == key_id  # an order placed with a key belongs to the key


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Basic YWxpY2U6cGFzcw=="},
    {"Authorization": "Bearer not.a.jwt"},
    bearer(ALICE, settings=Settings(jwt_secret="x" * 40)),  # signed with another secret
    {"X-API-Key": "orion_unknown"},
])
async def test_without_valid_credentials_it_is_401(world: World, client: Client, headers: dict[str, str]) -> None:
    response = await client.post("/v1/orders", json=order_body(), headers=headers)
    await problem(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="orion"'
    assert world.bus.sent == []


async def test_a_revoked_key_is_refused_at_its_next_request(world: World, client: Client) -> None:
    key, key_id = world.runtime.api_keys.grant("shop", "orders:read")
    assert (await client.get("/v1/orders", headers={"X-API-Key": key})).status == 200
    await world.runtime.api_keys.revoke(key_id)
    await problem(await client.get("/v1/orders", headers={"X-API-Key": key}), 401)


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/orders/o-1/fulfil"),
    ("GET", "/v1/inventory"),
    ("POST", "/v1/inventory/SKU-001/adjustments"),
    ("GET", "/v1/api-keys"),
    ("POST", "/v1/api-keys"),
    ("GET", "/v1/api-keys/ak_1"),
    ("DELETE", "/v1/api-keys/ak_1"),
    ("GET", "/v1/notifications/n-1"),
    ("POST", "/v1/notifications/n-1/retry"),
])
async def test_a_customer_gets_403_on_admin_routes(world: World, client: Client, method: str, path: str) -> None:
    world.store.add_order(order_row("o-1", status="CONFIRMED"))
    response = await client.request(method, path, json={"delta": 1, "reason": "restock"}, headers=bearer(ALICE))
    await problem(response, 403)
    assert world.bus.sent == []


async def test_a_service_token_may_not_place_orders_and_a_key_needs_its_scope(world: World, client: Client) -> None:
    await problem(await client.post("/v1/orders", json=order_body(), headers=SERVICE), 403)
    reader, _ = world.runtime.api_keys.grant("reader", "orders:read")
    body = await problem(await client.post("/v1/orders", json=order_body(), headers={"X-API-Key": reader}), 403)
    assert "orders:write" in body["detail"]
    # An endpoint that names no scope (admin only) refuses every key.
    everything, _ = world.runtime.api_keys.grant("all", "orders:read", "orders:write", "orders:fulfil",
                                                 "inventory:read", "inventory:write")
    await problem(await client.get("/v1/api-keys", headers={"X-API-Key": everything}), 403)
    assert world.bus.sent == []


async def test_every_bad_field_is_named(world: World, client: Client) -> None:
    body = {"lines": [{"sku": "SKU-001", "quantity": 0, "unit_price": 1}, {"quantity": 1}],
            "payment": {"token": "", "cvv": "123"}, "email": "nobody", "total": 1}
    response = await client.post("/v1/orders", json=body, headers=bearer(ALICE))
    await problem(
        response, 422, "lines[0].quantity", "lines[0].unit_price", "lines[1].sku",
        "payment.token", "payment.cvv", "email", "total",
    )
    assert world.bus.sent == [] and world.store.accepted == []


@pytest.mark.parametrize(("body", "fields"), [
    ([1, 2], ("body",)),
    ("order", ("body",)),
    ({}, ("lines", "payment", "email")),
    ({**order_body(), "email": "a\u0000@example.com"}, ("body",)),
])
async def test_a_body_that_is_not_an_order_is_422(world: World, client: Client, body: Any, fields: tuple[str, ...]) -> None:
    response = await client.post("/v1/orders", json=body, headers=bearer(ALICE))
    await problem(response, 422, *fields)
    assert world.bus.sent == []


async def test_an_unknown_sku_is_looked_up_again_before_it_is_refused(world: World, client: Client) -> None:
    response = await client.post("/v1/orders", json=order_body(("SKU-NEW", 1)), headers=bearer(ALICE))
    await problem(response, 422, "lines[0].sku")
    assert world.runtime.refreshes == 1
    world.runtime.later_products = [Product("SKU-NEW", "Just added", 700)]
    response = await client.post("/v1/orders", json=order_body(("SKU-NEW", 1)), headers=bearer(ALICE))
    assert response.status == 202
    assert world.store.accepted[-1][0].lines == (("SKU-NEW", 1, 700),)


async def test_a_body_other_than_json_is_415(world: World, client: Client) -> None:
    response = await client.post(
        "/v1/orders", data=b'{"lines": []}', headers={**bearer(ALICE), "Content-Type": "text/plain"},
    )
    await problem(response, 415)
    assert world.bus.sent == []


async def test_json_with_a_charset_is_json(world: World, client: Client) -> None:
    response = await client.post(
        "/v1/orders", data=json.dumps(order_body()).encode(),
        headers={**bearer(ALICE), "Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status == 202


async def test_a_json_body_without_content_type_is_read_as_json(world: World, client: Client) -> None:
    response = await client.post(
        "/v1/orders", data=json.dumps(order_body()).encode(), headers=bearer(ALICE),
        skip_auto_headers=["Content-Type"],
    )
    assert response.status == 202


@pytest.mark.parametrize("raw", [b"{", b"", b"[" * 10_000 + b"]" * 10_000])
async def test_a_body_that_is_not_json_is_400(world: World, client: Client, raw: bytes) -> None:
    response = await client.post(
        "/v1/orders", data=raw, headers={**bearer(ALICE), "Content-Type": "application/json"},
    )
    await problem(response, 400)
    assert world.bus.sent == []


async def test_a_body_over_256_kib_is_413(world: World, client: Client) -> None:
    raw = b'{"email": "' + b"a" * BODY_LIMIT + b'"}'
    response = await client.post("/v1/orders", data=raw, headers={**bearer(ALICE), "Content-Type": "application/json"})
    await problem(response, 413)
    assert world.bus.sent == []


async def test_when_kafka_does_not_ack_the_order_is_503_and_not_recorded(world: World, client: Client) -> None:
    world.bus.error = TimeoutError()
    response = await client.post("/v1/orders", json=order_body(), headers=bearer(ALICE))
    body = await problem(response, 503)
    assert response.headers["Retry-After"] == "1"
    assert "TimeoutError" in body["detail"]
    assert world.store.accepted == []


async def test_an_order_in_kafka_is_accepted_even_when_pre_recording_fails(world: World, client: Client) -> None:
    world.store.record_error = ConnectionError("database restarting")
    response = await client.post("/v1/orders", json=order_body(), headers=bearer(ALICE))
    assert response.status == 202
    assert [key for _, key, *_ in world.bus.sent] == [(await response.json())["order_id"]]


async def test_an_unexpected_error_is_a_500_problem_quoting_the_correlation_id(world: World, client: Client) -> None:
    async def broken() -> list[dict[str, Any]]:
        raise RuntimeError("boom")

    world.store.list_products = broken  # type: ignore[method-assign]
    response = await client.get("/v1/products", headers={**bearer(ALICE), CORRELATION_ID: "cid-500"})
    body = await problem(response, 500)
    assert "cid-500" in body["detail"] and "boom" not in body["detail"]


async def test_a_method_a_view_does_not_have_is_405_problem(client: Client) -> None:
    await problem(await client.delete("/v1/orders", headers=bearer(ALICE)), 405)
    await problem(await client.get("/v1/nothing-here", headers=bearer(ALICE)), 404)


# --- GET /v1/orders -------------------------------------------------------------------------


def some_orders(world: World) -> list[str]:
    """Five orders of alice and two of bob, at increasing times; alice's ids newest first."""
    for i in range(5):
        world.store.add_order(order_row(f"a-{i}", ALICE, "PENDING" if i % 2 else "CONFIRMED", minute=i))
    for i in range(2):
        world.store.add_order(order_row(f"b-{i}", BOB, minute=10 + i))
    return [f"a-{i}" for i in reversed(range(5))]


async def test_a_customer_lists_only_their_own_orders_newest_first(world: World, client: Client) -> None:
    mine = some_orders(world)
    response = await client.get("/v1/orders?user_id=bob", headers=bearer(ALICE))
    assert response.status == 200
    body = await response.json()
    assert [o["order_id"] for o in body["items"]] == mine
    assert body["next_cursor"] is None
    assert world.store.list_calls[-1] == {"user_id": ALICE, "status": None, "limit": 20, "cursor": None}


async def test_admins_and_services_list_everyone_or_filter_by_user(world: World, client: Client) -> None:
    some_orders(world)
    everyone = await (await client.get("/v1/orders", headers=ADMIN)).json()
    assert len(everyone["items"]) == 7
    bobs = await (await client.get("/v1/orders?user_id=bob", headers=SERVICE)).json()
    assert [o["order_id"] for o in bobs["items"]] == ["b-1", "b-0"]


async def test_orders_are_paged_with_a_cursor(world: World, client: Client) -> None:
    mine = some_orders(world)
    seen, cursor, pages = [], None, 0
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        response = await client.get("/v1/orders" + query, headers=bearer(ALICE))
        assert response.status == 200
        body = await response.json()
        assert len(body["items"]) <= 2
        seen += [o["order_id"] for o in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == mine and pages == 3


async def test_orders_filter_by_status(world: World, client: Client) -> None:
    some_orders(world)
    body = await (await client.get("/v1/orders?status=CONFIRMED", headers=bearer(ALICE))).json()
    assert [o["order_id"] for o in body["items"]] == ["a-4", "a-2", "a-0"]


@pytest.mark.parametrize(("query", "field"), [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"), ("limit=-5", "limit"),
    ("status=SHIPPED", "status"), ("status=pending", "status"), ("cursor=bm90LWEtY3Vyc29y", "cursor"),
])
async def test_bad_list_parameters_are_422(client: Client, query: str, field: str) -> None:
    await problem(await client.get(f"/v1/orders?{query}", headers=bearer(ALICE)), 422, field)


@pytest.mark.parametrize("limit", [1, 100])
async def test_the_limit_bounds_are_allowed(world: World, client: Client, limit: int) -> None:
    some_orders(world)
    body = await (await client.get(f"/v1/orders?limit={limit}", headers=bearer(ALICE))).json()
    assert len(body["items"]) == min(limit, 5)
    assert world.store.list_calls[-1]["limit"] == limit


# --- one order, its events ------------------------------------------------------------------


async def test_an_order_is_shown_to_its_owner_and_admins_only(world: World, client: Client) -> None:
    row = world.store.add_order(order_row("o-1", ALICE))
    mine = await client.get("/v1/orders/o-1", headers=bearer(ALICE))
    assert mine.status == 200 and await mine.json() == row
    assert await (await client.get("/v1/orders/o-1", headers=ADMIN)).json() == row
    assert await (await client.get("/v1/orders/o-1", headers=SERVICE)).json() == row
    # Another user's order is indistinguishable from one that does not exist.
    theirs = await problem(await client.get("/v1/orders/o-1", headers=bearer(BOB)), 404)
    missing = await problem(await client.get("/v1/orders/o-2", headers=bearer(BOB)), 404)
    assert theirs["detail"] == "no order o-1" and missing["detail"] == "no order o-2"


async def test_an_orders_events_are_shown_to_its_owner_only(world: World, client: Client) -> None:
    world.store.add_order(order_row("o-1", ALICE))
    trail = [{"seq": 1, "type": "OrderPlaced", "at": "2024-05-01T12:00:00Z", "data": {},
              "correlation_id": "c-1", "actor": "user:alice", "actor_roles": ["customer"]}]
    world.store.events["o-1"] = trail
    response = await client.get("/v1/orders/o-1/events", headers=bearer(ALICE))
    assert response.status == 200
    assert await response.json() == {"items": trail, "next_cursor": None}
    body = await problem(await client.get("/v1/orders/o-1/events", headers=bearer(BOB)), 404)
    assert "OrderPlaced" not in body["detail"]
    await problem(await client.get("/v1/orders/o-9/events", headers=ADMIN), 404)


# --- cancel, fulfil -------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "told", "sends"), [
    ("PENDING", "CANCELLING", True), ("CONFIRMED", "CANCELLING", True), ("CANCELLED", "CANCELLED", False),
])
async def test_cancel_asks_the_saga_as_the_caller(
    world: World, client: Client, status: str, told: str, sends: bool,
) -> None:
    world.store.add_order(order_row("o-1", ALICE, status))
    response = await client.post("/v1/orders/o-1/cancel", headers={**bearer(ALICE), CORRELATION_ID: "c-cancel"})
    assert response.status == 202
    assert await response.json() == {"order_id": "o-1", "status": told, "links": {"self": "/v1/orders/o-1"}}
    if sends:
        ((topic, key, message, _),) = world.bus.sent
        assert (topic, key, type(message), message.order_id) == ("orders", "o-1", c.CancelOrder, "o-1")
        assert world.bus.headers() == {"correlation-id": "c-cancel", "actor": "user:alice", "actor-roles": "customer"}
    else:
        assert world.bus.sent == []


async def test_cancel_refuses_an_ended_order_or_someone_elses(world: World, client: Client) -> None:
    world.store.add_order(order_row("o-1", ALICE, "FULFILLED"))
    world.store.add_order(order_row("o-2", ALICE, "PENDING"))
    await problem(await client.post("/v1/orders/o-1/cancel", headers=bearer(ALICE)), 409)
    await problem(await client.post("/v1/orders/o-2/cancel", headers=bearer(BOB)), 404)
    assert world.bus.sent == []
    # An admin may cancel anyone's.
    assert (await client.post("/v1/orders/o-2/cancel", headers=ADMIN)).status == 202
    assert world.bus.headers()["actor"] == "user:root"


async def test_fulfil_a_confirmed_order_as_admin_or_service(world: World, client: Client) -> None:
    world.store.add_order(order_row("o-1", ALICE, "CONFIRMED"))
    response = await client.post("/v1/orders/o-1/fulfil", headers=SERVICE)
    assert response.status == 202
    assert await response.json() == {"order_id": "o-1", "links": {"self": "/v1/orders/o-1"}}
    ((topic, key, message, _),) = world.bus.sent
    assert (topic, key, type(message)) == ("orders", "o-1", c.FulfilOrder)
    assert world.bus.headers()["actor"] == "service:svc"
    assert world.bus.headers()["actor-roles"] == "service"


async def test_fulfil_refuses_what_is_not_confirmed_or_not_there(world: World, client: Client) -> None:
    world.store.add_order(order_row("o-1", ALICE, "PENDING"))
    await problem(await client.post("/v1/orders/o-1/fulfil", headers=ADMIN), 409)
    await problem(await client.post("/v1/orders/o-2/fulfil", headers=ADMIN), 404)
    assert world.bus.sent == []


async def test_fulfil_with_a_key_needs_the_fulfil_scope(world: World, client: Client) -> None:
    world.store.add_order(order_row("o-1", ALICE, "CONFIRMED"))
    writer, _ = world.runtime.api_keys.grant("writer", "orders:write")
    await problem(await client.post("/v1/orders/o-1/fulfil", headers={"X-API-Key": writer}), 403)
    shipper, shipper_id = world.runtime.api_keys.grant("shipper", "orders:fulfil")
    assert (await client.post("/v1/orders/o-1/fulfil", headers={"X-API-Key": shipper})).status == 202
    assert world.bus.headers()["actor"] == f"service:shipper/{shipper_id}"


# --- products and inventory -----------------------------------------------------------------


async def test_products_are_the_catalog(world: World, client: Client) -> None:
    response = await client.get("/v1/products", headers=bearer(ALICE))
    assert response.status == 200
    body = await response.json()
    assert [p["sku"] for p in body["items"]] == [p.sku for p in world.runtime.catalog.products()]
    assert body["next_cursor"] is None
    one = await client.get("/v1/products/SKU-003", headers=bearer(ALICE))
    assert await one.json() == {"sku": "SKU-003", "name": "Basalt mechanical keyboard", "unit_price": 12_900,
                                "currency": "EUR", "active": True, "category": "peripherals"}
    await problem(await client.get("/v1/products/SKU-404", headers=bearer(ALICE)), 404)
    await problem(await client.get("/v1/products"), 401)


async def test_inventory_is_listed_to_admins_in_pages(world: World, client: Client) -> None:
    for sku in ("SKU-003", "SKU-001", "SKU-002"):
        world.store.stock[sku] = stock_row(sku)
    first = await (await client.get("/v1/inventory?limit=2", headers=ADMIN)).json()
    assert [r["sku"] for r in first["items"]] == ["SKU-001", "SKU-002"]
    assert first["next_cursor"]
    rest = await (await client.get(f"/v1/inventory?limit=2&cursor={first['next_cursor']}", headers=ADMIN)).json()
    assert [r["sku"] for r in rest["items"]] == ["SKU-003"] and rest["next_cursor"] is None


@pytest.mark.parametrize(("query", "field"), [
    ("limit=0", "limit"), ("limit=501", "limit"), ("limit=x", "limit"), ("cursor=%21%21", "cursor"),
])
async def test_bad_inventory_parameters_are_422(client: Client, query: str, field: str) -> None:
    await problem(await client.get(f"/v1/inventory?{query}", headers=ADMIN), 422, field)


async def test_the_inventory_limit_may_be_500(world: World, client: Client) -> None:
    assert (await client.get("/v1/inventory?limit=500", headers=ADMIN)).status == 200


async def test_one_skus_level_is_for_anyone(world: World, client: Client) -> None:
    world.store.stock["SKU-001"] = level = stock_row("SKU-001", on_hand=40, reserved=5)
    response = await client.get("/v1/inventory/SKU-001", headers=bearer(ALICE))
    assert response.status == 200 and await response.json() == level
    await problem(await client.get("/v1/inventory/SKU-002", headers=bearer(ALICE)), 404)


# --- stock adjustments ----------------------------------------------------------------------


async def test_an_applied_adjustment_is_200_with_the_new_level(world: World, client: Client) -> None:
    world.store.stock["SKU-001"] = level = stock_row("SKU-001", on_hand=550)
    world.store.adjustment_answer = {"status": "applied", "detail": None}
    response = await client.post(
        "/v1/inventory/SKU-001/adjustments", json={"delta": 50, "reason": "restock", "low_stock_threshold": 10},
        headers=ADMIN,
    )
    assert response.status == 200
    body = await response.json()
    ((topic, key, command, _),) = world.bus.sent
    assert (topic, key, type(command)) == (t.STOCK_REQUESTS.name, "SKU-001", c.AdjustStock)
    assert (command.delta, command.reason, command.low_stock_threshold) == (50, "restock", 10)
    assert body == {"adjustment_id": command.adjustment_id, "status": "applied", "level": level}
    assert world.store.adjustments_asked == [command.adjustment_id]
    assert world.bus.headers()["actor"] == "user:root"


async def test_an_adjustment_not_applied_in_time_is_202_pending(
    world: World, client: Client, monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = orders.adjust_stock.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "wait", 0.0)  # the owner's answer is not waited for
    response = await client.post("/v1/inventory/SKU-001/adjustments", json={"delta": -3, "reason": "damage"}, headers=SERVICE)
    assert response.status == 202
    ((_, _, command, _),) = world.bus.sent
    assert await response.json() == {"adjustment_id": command.adjustment_id, "status": "pending"}


async def test_an_adjustment_with_a_key_needs_the_inventory_write_scope(world: World, client: Client) -> None:
    world.store.adjustment_answer = {"status": "applied", "detail": None}
    reader, _ = world.runtime.api_keys.grant("reader", "inventory:read")
    payload = {"delta": 1, "reason": "correction"}
    await problem(await client.post("/v1/inventory/SKU-001/adjustments", json=payload, headers={"X-API-Key": reader}), 403)
    writer, writer_id = world.runtime.api_keys.grant("stock", "inventory:write")
    response = await client.post("/v1/inventory/SKU-001/adjustments", json=payload, headers={"X-API-Key": writer})
    assert response.status == 200
    assert world.bus.headers() == {"correlation-id": response.headers[CORRELATION_ID],
                                   "actor": f"service:stock/{writer_id}", "actor-roles": "service"}


@pytest.mark.parametrize(("payload", "fields"), [
    ({"delta": 0, "reason": "restock"}, ("delta",)),
    ({"delta": 1.5, "reason": "gift"}, ("delta", "reason")),
    ({"delta": True, "reason": "seed"}, ("delta", "reason")),
    ({"delta": 1, "reason": "restock", "low_stock_threshold": -1, "sku": "SKU-002"}, ("low_stock_threshold", "sku")),
    ([], ("body",)),
])
async def test_a_bad_adjustment_is_422(world: World, client: Client, payload: Any, fields: tuple[str, ...]) -> None:
    response = await client.post("/v1/inventory/SKU-001/adjustments", json=payload, headers=ADMIN)
    await problem(response, 422, *fields)
    assert world.bus.sent == []


async def test_an_adjustment_that_cannot_be_made_is_404_or_409(world: World, client: Client) -> None:
    world.store.stock["SKU-001"] = stock_row("SKU-001", on_hand=10, reserved=8)
    await problem(await client.post("/v1/inventory/SKU-404/adjustments", json={"delta": 1, "reason": "restock"},
                                     headers=ADMIN), 404)
    body = await problem(await client.post("/v1/inventory/SKU-001/adjustments", json={"delta": -3, "reason": "damage"},
                                           headers=ADMIN), 409)
    assert "-1" in body["detail"]
    assert world.bus.sent == []
    # The owner refusing it (it checks the live level) is a 409 too, with its reason.
    world.store.adjustment_answer = {"status": "rejected", "detail": "would leave -4 available"}
    body = await problem(await client.post("/v1/inventory/SKU-001/adjustments", json={"delta": -2, "reason": "damage"},
                                           headers=ADMIN), 409)
    assert body["detail"] == "would leave -4 available"


async def test_an_adjustment_with_a_body_other_than_json_is_415(world: World, client: Client) -> None:
    response = await client.post(
        "/v1/inventory/SKU-001/adjustments", data=b'{"delta": 1}', headers={**ADMIN, "Content-Type": "text/plain"},
    )
    await problem(response, 415)
    assert world.bus.sent == []


# --- /health, /ready, /metrics, /openapi.json -----------------------------------------------


async def test_health_is_ok_without_credentials(world: World, client: Client) -> None:
    response = await client.get("/health")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "worker": world.settings.worker_id}
    assert response.headers[CORRELATION_ID]


async def test_health_is_503_when_table_recovery_is_stuck(world: World, client: Client) -> None:
    world.watchdog.stalled = 125.0
    body = await problem(await client.get("/health"), 503)
    assert "125 s" in body["detail"] and world.settings.worker_id in body["detail"]
    assert world.watchdog.asked  # asked with the monotonic clock of the request


async def test_ready_is_200_with_the_door_when_everything_is_there(world: World, client: Client) -> None:
    response = await client.get("/ready")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ready"
    assert body["admission"]["open"] is True
    assert body["admission"]["max_in_flight"] == world.settings.max_in_flight


@pytest.mark.parametrize(("recovered", "db", "kafka", "missing"), [
    (False, None, None, ["table recovery"]),
    (True, ConnectionRefusedError(), None, ["postgresql (ConnectionRefusedError)"]),
    (True, None, OSError(), ["kafka (OSError)"]),
    (False, TimeoutError(), OSError(), ["table recovery", "postgresql (TimeoutError)", "kafka (OSError)"]),
])
async def test_ready_is_503_naming_what_is_missing(
    world: World, client: Client, recovered: bool, db: Exception | None, kafka: Exception | None,
    missing: list[str],
) -> None:
    world.recovered = recovered
    world.store.ping_error = db
    world.runtime.kafka_error = kafka
    response = await client.get("/ready")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "unavailable" and body["missing"] == missing
    assert "open" in body["admission"]


async def test_ready_shows_a_closed_door(world: World, client: Client) -> None:
    close_the_door(world)
    body = await (await client.get("/ready")).json()
    assert body["admission"]["open"] is False
    assert body["admission"]["in_flight"] == world.settings.max_in_flight


async def test_ready_names_postgresql_when_the_runtime_cannot_start(world: World, client: Client) -> None:
    world.runtime.ready_error = RuntimeError("ORION_DATABASE_URL is not set")
    body = await (await client.get("/ready")).json()
    assert body["missing"] == ["postgresql (RuntimeError)"]


async def test_metrics_are_prometheus_text_counting_requests(client: Client) -> None:
    await client.get("/v1/products")  # a 401, counted under its route template
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    assert 'orion_http_requests_total{method="GET",route="/v1/products",status="401"}' in text
    assert "orion_orders_refused_total" in text


async def test_the_openapi_document_names_every_route_and_method(client: Client) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    served = await response.json()
    assert served == document()
    router = application(World().api).router
    routed = {
        (route.resource.canonical, route.method.lower())
        for route in router.routes() if route.resource is not None and route.method != "HEAD"
    }
    documented = {
        (path, method) for path, item in served["paths"].items() for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert routed == documented - {("/v1/ws", "get")}
    assert {path for path, _ in ALL_ROUTES} <= set(served["paths"])
