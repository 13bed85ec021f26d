"""Overload and long runs: refuse at the door instead of failing late, and forget finished
orders after the retention, for good (a restarted worker does not bring them back)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from orion_streams.adapters.postgres import SqlAlchemyStore

from ..integration.harness import (
    TEST_PRODUCTS,
    Api,
    Services,
    Worker,
    count_rows,
    eventually,
    table_values,
)

PARTITIONS = 4


async def _end_offsets(services: Services, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=services.bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


def _metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" ([0-9.e+-]+)$"
    for line in text.splitlines():
        match = re.match(pattern, line)
        if match:
            return float(match.group(1))
    return 0.0


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


async def test_admission_refuses_at_the_door_and_never_an_accepted_retry(
    fresh_services: Services, session: aiohttp.ClientSession,
) -> None:
    # Three orders whose payment never answers stay in flight for the payment budget (10 s):
    # with room for three, the fourth is refused until they are decided.
    worker = Worker(fresh_services, "door", {"ORION_MAX_IN_FLIGHT": "3", "ORION_PAYMENT_TIMEOUT": "10"}).start()
    store = SqlAlchemyStore(fresh_services.database_url, pool_size=1)
    try:
        api = Api(worker.url, session)
        admin = fresh_services.token("mike", ("admin",))
        customer = fresh_services.token("sarah")
        sku = TEST_PRODUCTS[0].sku
        await api.restock(admin, sku, 100)
        line = [{"sku": sku, "quantity": 1}]
        first_key = f"k-{uuid.uuid4().hex}"
        accepted = []
        for key in (first_key, f"k-{uuid.uuid4().hex}", f"k-{uuid.uuid4().hex}"):
            status, body, _ = await api.place(customer, line, payment="tok_timeout", headers={"Idempotency-Key": key})
            assert status == 202, body
            accepted.append(body["order_id"])

        async def closed() -> Any:
            _, ready, _ = await api.call("GET", "/ready")
            return ready if not ready["admission"]["open"] else None

        ready = await eventually(closed, 10, "admission to close with three orders in flight")
        assert ready["admission"]["in_flight"] >= 3 and "3 orders" in ready["admission"]["reason"]

        orders_before = await count_rows(store, "orders")
        offsets_before = await _end_offsets(fresh_services, "orders")
        status, problem, headers = await api.place(customer, line)
        assert status == 503, problem
        assert headers["Content-Type"].startswith("application/problem+json")
        assert int(headers["Retry-After"]) >= 1
        assert "in flight" in problem["detail"] or "being decided" in problem["detail"]
        # A new key is refused too; the retry of an accepted order is answered, not refused.
        status, _, _ = await api.place(customer, line, headers={"Idempotency-Key": f"k-{uuid.uuid4().hex}"})
        assert status == 503
        status, body, _ = await api.place(customer, line, payment="tok_timeout", headers={"Idempotency-Key": first_key})
        assert status == 202 and body["order_id"] == accepted[0]
        # Nothing was written or sent for the refused ones.
        assert await count_rows(store, "orders") == orders_before == 3
        assert await _end_offsets(fresh_services, "orders") == offsets_before
        _, text, _ = await api.call("GET", "/metrics")
        assert _metric(text, "orion_orders_refused_total", reason="in_flight") == 2
        assert _metric(text, "orion_admission_open") == 0

        # Decided on their merits (no payment answer within its budget): the door opens again.
        for order_id in accepted:
            order = await api.decided(customer, order_id, timeout=30)
            assert order["status"] == "PAYMENT_FAILED" and "did not answer" in order["failure_reason"]

        async def placed() -> Any:
            status, body, _ = await api.place(customer, line)
            return body if status == 202 else None

        await eventually(placed, 15, "an order to be accepted once the door reopened", interval=0.5)
    finally:
        await store.close()
        worker.stop()


async def test_finished_orders_are_forgotten_after_the_retention_and_stay_forgotten(
    fresh_services: Services, session: aiohttp.ClientSession,
) -> None:
    env = {"ORION_ORDER_RETENTION": "3"}
    worker = Worker(fresh_services, "keeper", env).start()
    try:
        api = Api(worker.url, session)
        admin = fresh_services.token("mike", ("admin",))
        customer = fresh_services.token("sarah")
        sku, scarce = TEST_PRODUCTS[0].sku, TEST_PRODUCTS[1].sku
        await api.restock(admin, sku, 50)
        await api.restock(admin, scarce, 1)

        async def place(lines: list[dict[str, Any]], payment: str = "tok_ok") -> Any:
            status, body, _ = await api.place(customer, lines, payment=payment)
            assert status == 202, body
            return await api.decided(customer, body["order_id"], final=("CONFIRMED", "REJECTED", "PAYMENT_FAILED"))

        declined = await place([{"sku": sku, "quantity": 1}], "tok_declined")
        rejected = await place([{"sku": sku, "quantity": 1}, {"sku": scarce, "quantity": 2}])
        fulfilled = await place([{"sku": sku, "quantity": 2}])
        cancelled = await place([{"sku": sku, "quantity": 3}])
        kept = await place([{"sku": sku, "quantity": 4}])
        assert [o["status"] for o in (declined, rejected, fulfilled, cancelled, kept)] == [
            "PAYMENT_FAILED", "REJECTED", "CONFIRMED", "CONFIRMED", "CONFIRMED",
        ]
        assert (await api.call("POST", f"/v1/orders/{fulfilled['order_id']}/fulfil", admin))[0] == 202
        assert (await api.call("POST", f"/v1/orders/{cancelled['order_id']}/cancel", customer))[0] == 202
        await api.decided(customer, fulfilled["order_id"], final=("FULFILLED",))
        await api.decided(customer, cancelled["order_id"], final=("CANCELLED",))
        gone = [o["order_id"] for o in (declined, rejected, fulfilled, cancelled)]

        async def retired() -> Any:
            sagas = await table_values(fresh_services, "sagas")
            inventory = await table_values(fresh_services, "inventory")
            holds = {tuple(k.split("\x1f")): v for k, v in inventory.items() if "\x1f" in k}
            markers = [v for k, v in inventory.items() if "\x1e" in k]
            done = (
                all(sagas.get(o, "missing") is None for o in gone)
                and all(v is None for (_, o), v in holds.items() if o in gone)
                and all(v is None for v in markers)
            )
            return (sagas, holds) if done else None

        sagas, holds = await eventually(retired, 60, "finished orders' sagas and holds to be retired", interval=0.5)
        # Tombstones: the key is on the changelog with no value; the open order is kept.
        assert all(o in sagas and sagas[o] is None for o in gone)
        assert len([k for k in holds if k[1] in gone]) == 5  # the rejected order asked two SKUs
        assert sagas[kept["order_id"]] is not None and holds[(sku, kept["order_id"])] is not None
        _, events, _ = await api.call("GET", f"/v1/orders/{cancelled['order_id']}/events", admin)
        assert [e["data"]["outcome"] for e in events["items"] if e["type"] == "PaymentVoided"] == ["voided"]

        _, text, _ = await api.call("GET", "/metrics")
        assert _metric(text, "orion_state_retired_total", table="sagas") == 4
        assert _metric(text, "orion_table_entries", table="sagas") == 1
        entries_before = _metric(text, "orion_table_entries", table="inventory")
        stock = await api.stock(admin, sku)
        assert (stock["on_hand"], stock["reserved"]) == (48, 4)  # 2 sold, 4 held by the kept order
    finally:
        worker.stop()

    # A restarted worker recovers the tables from the changelogs: the tombstones keep the
    # retired orders away, and the open order and the stock are as they were.
    again = Worker(fresh_services, "keeper", env).start()
    try:
        api = Api(again.url, session)
        _, text, _ = await api.call("GET", "/metrics")
        assert _metric(text, "orion_table_entries", table="sagas") == 1
        assert _metric(text, "orion_table_entries", table="inventory") == entries_before
        stock = await api.stock(fresh_services.token("mike", ("admin",)), sku)
        assert (stock["on_hand"], stock["reserved"]) == (48, 4)
        status, body, _ = await api.call("POST", f"/v1/orders/{kept['order_id']}/cancel", fresh_services.token("sarah"))
        assert status == 202, body
        order = await api.decided(fresh_services.token("sarah"), kept["order_id"], final=("CANCELLED",))
        assert order["status"] == "CANCELLED"
    finally:
        again.stop()
