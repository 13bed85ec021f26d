"""The order pipeline end to end on the real broker and database: place, reserve, pay,
confirm, compensate, cancel, fulfil."""

from __future__ import annotations

import asyncio
from typing import Any

from orion_streams.adapters.postgres import SqlAlchemyStore

from .harness import PAYMENT_TIMEOUT, Api, Services, count_rows, eventually


async def _level(api: Api, token: str, sku: str, **expected: int) -> Any:
    async def check() -> Any:
        level = await api.stock(token, sku)
        return level if all(level[k] == v for k, v in expected.items()) else None

    return await eventually(check, 20, f"{sku} stock to be {expected}")


async def test_order_is_confirmed_priced_and_audited(api: Api, customer: str, admin: str, fresh_sku: Any) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 10)
    status, order, headers = await api.place(
        customer, [{"sku": sku, "quantity": 2}, {"sku": sku, "quantity": 1}], wait=15,
        headers={"X-Correlation-ID": "corr-test-1"},
    )
    assert status == 200, order
    assert headers["X-Correlation-ID"] == "corr-test-1"
    assert order["status"] == "CONFIRMED"
    assert order["lines"] == [{"sku": sku, "quantity": 3, "unit_price": order["lines"][0]["unit_price"],
                               "line_total": 3 * order["lines"][0]["unit_price"]}]
    assert order["total"] == order["lines"][0]["line_total"] and order["currency"] == "EUR"
    await _level(api, customer, sku, on_hand=10, reserved=3, available=7)

    async def trail() -> Any:
        status, body, _ = await api.call("GET", f"/v1/orders/{order['order_id']}/events", customer)
        types = [e["type"] for e in body["items"]]
        return body["items"] if "PaymentAuthorized" in types else None

    events = await eventually(trail, 10, "the audit trail")
    types = [e["type"] for e in events]
    # The payment is asked for alongside the reservation: their answers come in either order.
    assert types[0] == "OrderPlaced" and {"LineReserved", "PaymentAuthorized"} <= set(types[1:])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {e["correlation_id"] for e in events} == {"corr-test-1"}
    assert events[0]["actor"] == "user:sarah"


async def test_order_is_readable_right_after_202(api: Api, customer: str, admin: str, fresh_sku: Any) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 5)
    status, body, _ = await api.place(customer, [{"sku": sku, "quantity": 1}])
    assert status == 202 and body["status"] == "PENDING"
    assert body["links"]["self"] == f"/v1/orders/{body['order_id']}"
    status, order, _ = await api.call("GET", f"/v1/orders/{body['order_id']}", customer)
    assert status == 200 and order["order_id"] == body["order_id"]
    assert (await api.decided(customer, body["order_id"]))["status"] == "CONFIRMED"


async def test_declined_payment_restores_stock(api: Api, customer: str, admin: str, fresh_sku: Any) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 4)
    status, order, _ = await api.place(customer, [{"sku": sku, "quantity": 3}], payment="tok_declined", wait=15)
    assert status == 200 and order["status"] == "PAYMENT_FAILED"
    assert "declined" in order["failure_reason"]
    await _level(api, customer, sku, on_hand=4, reserved=0, available=4)


async def test_one_line_out_of_stock_releases_the_others(api: Api, customer: str, admin: str, fresh_sku: Any) -> None:
    plenty, scarce = fresh_sku(), fresh_sku()
    await api.restock(admin, plenty, 10)
    await api.restock(admin, scarce, 1)
    status, order, _ = await api.place(
        customer, [{"sku": plenty, "quantity": 3}, {"sku": scarce, "quantity": 2}], wait=15
    )
    assert status == 200 and order["status"] == "REJECTED"
    assert scarce in order["failure_reason"] and "out of stock" in order["failure_reason"]
    await _level(api, customer, plenty, on_hand=10, reserved=0)
    await _level(api, customer, scarce, on_hand=1, reserved=0)


async def test_payment_timeout_fails_the_order_and_releases(api: Api, customer: str, admin: str, fresh_sku: Any) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 3)
    status, body, _ = await api.place(customer, [{"sku": sku, "quantity": 2}], payment="tok_timeout")
    assert status == 202
    order = await api.decided(customer, body["order_id"], timeout=PAYMENT_TIMEOUT + 20)
    assert order["status"] == "PAYMENT_FAILED" and order["failure_reason"].startswith("payment timed out")
    await _level(api, customer, sku, on_hand=3, reserved=0)


async def test_cancel_releases_and_fulfilled_cannot_be_cancelled(api: Api, customer: str, admin: str, fresh_sku: Any) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 6)
    _, first, _ = await api.place(customer, [{"sku": sku, "quantity": 2}], wait=15)
    _, second, _ = await api.place(customer, [{"sku": sku, "quantity": 3}], wait=15)
    assert first["status"] == second["status"] == "CONFIRMED"
    await _level(api, customer, sku, reserved=5)

    status, _, _ = await api.call("POST", f"/v1/orders/{first['order_id']}/cancel", customer)
    assert status == 202
    assert (await api.decided(customer, first["order_id"], final=("CANCELLED",)))["status"] == "CANCELLED"
    await _level(api, customer, sku, on_hand=6, reserved=3)

    status, problem, _ = await api.call("POST", f"/v1/orders/{second['order_id']}/fulfil", customer)
    assert status == 403, problem
    status, _, _ = await api.call("POST", f"/v1/orders/{second['order_id']}/fulfil", admin)
    assert status == 202
    await api.decided(customer, second["order_id"], final=("FULFILLED",))
    await _level(api, customer, sku, on_hand=3, reserved=0, available=3)
    status, problem, headers = await api.call("POST", f"/v1/orders/{second['order_id']}/cancel", customer)
    assert status == 409 and headers["Content-Type"].startswith("application/problem+json")
    assert "fulfilled" in problem["detail"]


async def test_idempotency_key_gives_one_order(api: Api, services: Services, customer: str, admin: str, fresh_sku: Any) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 10)
    key = {"Idempotency-Key": "checkout-42"}
    replies = await asyncio.gather(*(api.place(customer, [{"sku": sku, "quantity": 1}], headers=key) for _ in range(3)))
    assert {r[0] for r in replies} == {202}
    ids = {r[1]["order_id"] for r in replies}
    assert len(ids) == 1
    status, again, _ = await api.place(customer, [{"sku": sku, "quantity": 1}], headers=key, wait=15)
    assert status == 200 and again["order_id"] in ids and again["status"] == "CONFIRMED"
    status, problem, _ = await api.place(customer, [{"sku": sku, "quantity": 2}], headers=key)
    assert status == 422 and "Idempotency-Key" in problem["detail"]
    await _level(api, customer, sku, reserved=1)
    store = SqlAlchemyStore(services.database_url, pool_size=1)
    try:
        assert await count_rows(store, "orders", idempotency_key="checkout-42") == 1
        assert await count_rows(store, "order_lines", sku=sku) == 1
    finally:
        await store.close()


async def test_list_orders_pages_newest_first_and_only_mine(api: Api, services: Services, admin: str, fresh_sku: Any) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 10)
    me = services.token("lister", ("customer",))
    placed = []
    for _ in range(5):
        _, body, _ = await api.place(me, [{"sku": sku, "quantity": 1}])
        placed.append(body["order_id"])
    seen: list[str] = []
    cursor = None
    while True:
        path = "/v1/orders?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page, _ = await api.call("GET", path, me)
        assert status == 200 and len(page["items"]) <= 2
        seen.extend(o["order_id"] for o in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(placed))
    status, problem, _ = await api.call("GET", "/v1/orders?cursor=garbage", me)
    assert status == 422
    status, page, _ = await api.call("GET", "/v1/orders?user_id=lister&limit=100", admin)
    assert status == 200 and {o["order_id"] for o in page["items"]} == set(placed)
