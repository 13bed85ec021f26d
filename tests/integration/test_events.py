"""Orders from any Kafka producer, redelivery and dead letters, on the real broker."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from orion_streams import records
from orion_streams.adapters.kafka_admin import TopicMismatch, ensure_topics
from orion_streams.adapters.postgres import SqlAlchemyStore
from orion_streams.agents.common import partition_for
from orion_streams.services.ports import Accepted

from .harness import (
    PARTITIONS,
    Api,
    Services,
    count_rows,
    eventually,
    produce,
    read_topic,
    table_values,
)


def _placed(order_id: str, sku: str, quantity: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "type": "OrderPlaced", "event_id": str(uuid.uuid4()), "order_id": order_id,
        "user_id": "sarah", "email": "sarah@example.com",
        "lines": [{"sku": sku, "quantity": quantity}], "payment": {"token": "tok_ok"}, **extra,
    }


async def _dead_letters(services: Services, **match: Any) -> list[dict[str, Any]]:
    out = []
    for rec in await read_topic(services.bootstrap, "dead-letters"):
        body = json.loads(rec.value)
        if all(body.get(k) == v for k, v in match.items()):
            out.append(body)
    return out


async def test_external_producer_order_is_processed_like_http(api: Api, services: Services, customer: str, admin: str, fresh_sku: Any) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 5)
    order_id = f"ext-{uuid.uuid4().hex}"
    # kcat's default partitioner would put the key elsewhere; the saga must move it.
    wrong = (partition_for(order_id, PARTITIONS) + 1) % PARTITIONS
    await produce(
        services.bootstrap, "orders", order_id.encode(), json.dumps(_placed(order_id, sku, 2)).encode(),
        headers=[("correlation-id", b"ext-corr"), ("actor", b"service:shop")], partition=wrong,
    )
    order = await api.decided(customer, order_id)
    assert order["status"] == "CONFIRMED" and order["user_id"] == "sarah"
    _, trail, _ = await api.call("GET", f"/v1/orders/{order_id}/events", customer)
    assert trail["items"][0]["correlation_id"] == "ext-corr"
    assert trail["items"][0]["actor"] == "service:shop"


async def test_redelivered_order_event_reserves_once_and_writes_one_order(
    api: Api, services: Services, customer: str, admin: str, fresh_sku: Any
) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 10)
    order_id = f"dup-{uuid.uuid4().hex}"
    raw = json.dumps(_placed(order_id, sku, 3)).encode()
    for _ in range(2):
        await produce(services.bootstrap, "orders", order_id.encode(), raw)
    # a redelivered reservation request, straight onto the SKU owner's topic
    reserve = json.dumps({"type": "ReserveLine", "order_id": order_id, "sku": sku, "quantity": 3}).encode()
    await produce(services.bootstrap, "stock-requests", sku.encode(), reserve)
    assert (await api.decided(customer, order_id))["status"] == "CONFIRMED"
    marker = f"marker-{uuid.uuid4().hex}"
    await produce(services.bootstrap, "orders", marker.encode(), json.dumps(_placed(marker, sku, 1)).encode())
    await api.decided(customer, marker)  # everything before it on the SKU has been applied

    level = await api.stock(customer, sku)
    assert level["reserved"] == 4 and level["on_hand"] == 10
    store = SqlAlchemyStore(services.database_url, pool_size=1)
    try:
        assert await count_rows(store, "orders", order_id=order_id) == 1
        assert await count_rows(store, "order_events", order_id=order_id, type="OrderPlaced") == 1
    finally:
        await store.close()
    stock = await table_values(services, "inventory")
    on_hand, reserved = stock[sku][:2]
    assert (on_hand, reserved) == (10, 4)


async def test_bad_events_go_to_dead_letters_and_the_partition_moves_on(
    api: Api, services: Services, customer: str, admin: str, fresh_sku: Any
) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 5)
    tag = uuid.uuid4().hex
    bad = {
        f"bad-json-{tag}": b"{not json",
        f"bad-sku-{tag}": json.dumps(_placed(f"bad-sku-{tag}", "NO-SUCH-SKU")).encode(),
        f"bad-qty-{tag}": json.dumps(_placed(f"bad-qty-{tag}", sku, 0)).encode(),
        f"bad-total-{tag}": json.dumps(_placed(f"bad-total-{tag}", sku, 1, total=1)).encode(),
        f"bad-type-{tag}": json.dumps({"type": "Nonsense", "order_id": f"bad-type-{tag}"}).encode(),
        f"bad-key-{tag}": json.dumps(_placed("another-id", sku, 1)).encode(),
    }
    for key, value in bad.items():
        # all on one partition, followed by a good order on that same partition
        await produce(services.bootstrap, "orders", key.encode(), value, partition=0)
    good = f"good-{tag}"
    await produce(services.bootstrap, "orders", good.encode(), json.dumps(_placed(good, sku)).encode(), partition=0)
    assert (await api.decided(customer, good))["status"] == "CONFIRMED"

    async def parked() -> Any:
        letters = {d["key"]: d for d in await _dead_letters(services, source_topic="orders") if d["key"] in bad}
        return letters if len(letters) == len(bad) else None

    letters = await eventually(parked, 20, "every bad event in dead-letters")
    assert "not JSON" in letters[f"bad-json-{tag}"]["reason"]
    assert "unknown SKU" in letters[f"bad-sku-{tag}"]["reason"]
    assert "quantity" in letters[f"bad-qty-{tag}"]["reason"]
    assert "total" in letters[f"bad-total-{tag}"]["reason"]
    assert "unknown message type" in letters[f"bad-type-{tag}"]["reason"]
    assert "key must equal" in letters[f"bad-key-{tag}"]["reason"]
    for letter in letters.values():
        assert letter["partition"] == 0 and isinstance(letter["offset"], int)
    level = await api.stock(customer, sku)
    assert level["reserved"] == 1  # only the good order holds stock
    for key in bad:
        status, _, _ = await api.call("GET", f"/v1/orders/{key}", customer)
        assert status == 404


async def test_a_batch_record_applies_its_good_items_and_parks_a_bad_one_or_a_broken_record_alone(
    api: Api, services: Services, customer: str, fresh_sku: Any
) -> None:
    sku = fresh_sku()
    tag = uuid.uuid4().hex
    partition = partition_for(sku, PARTITIONS)

    def adjust(n: int) -> bytes:
        return json.dumps({"type": "AdjustStock", "sku": sku, "adjustment_id": f"{tag}-{n}", "delta": 5,
                           "reason": "restock"}).encode()

    batch = records.encode_batch([
        (sku, adjust(1), [("correlation-id", f"batch-{tag}".encode())]),
        (sku, json.dumps({"type": "Nonsense", "sku": sku}).encode(), [("correlation-id", f"batch-{tag}".encode())]),
        (sku, adjust(2), []),
    ])
    batched = [(records.BATCH_HEADER, b"1")]
    await produce(services.bootstrap, "stock-requests", None, b"{not a batch", headers=batched, partition=partition)
    await produce(services.bootstrap, "stock-requests", None, batch, headers=batched, partition=partition)
    await produce(services.bootstrap, "stock-requests", sku.encode(), adjust(3), partition=partition)

    async def stocked() -> bool:
        status, level, _ = await api.call("GET", f"/v1/inventory/{sku}", customer)
        return status == 200 and level["on_hand"] == 15  # 404 until the first level is projected
    await eventually(stocked, 20, "the good items and the single record applied")

    async def parked() -> Any:
        letters = await _dead_letters(services, source_topic="stock-requests", partition=partition)
        item = [d for d in letters if d.get("item") == 1 and d["key"] == sku]
        broken = [d for d in letters if d["value"] == "{not a batch"]
        return (item, broken) if item and broken else None

    (item, *_), (broken, *_) = await eventually(parked, 20, "the bad item and the broken record in dead-letters")
    assert "unknown message type" in item["reason"] and json.loads(item["value"])["type"] == "Nonsense"
    assert "batch record is not JSON" in broken["reason"]
    assert item["offset"] > broken["offset"]


async def test_a_reservation_answer_for_an_order_not_seen_yet_keeps_its_units(
    api: Api, services: Services, customer: str, admin: str, fresh_sku: Any
) -> None:
    # After a takeover the dead worker's LineReserved (order-events) can reach the saga before
    # the order's OrderPlaced (orders). Once that gave the units back, and the order, answered
    # "held" when its saga started, was confirmed on nothing (51 sold of 50 in a failover run).
    # An order PostgreSQL knows as in flight keeps them; one it knows as finished, or not at
    # all, gives them back.
    from datetime import UTC, datetime

    sku = fresh_sku()
    await api.restock(admin, sku, 10)
    store = SqlAlchemyStore(services.database_url, pool_size=1)
    in_flight, unknown = f"early-{uuid.uuid4().hex}", f"stray-{uuid.uuid4().hex}"
    try:
        await store.record_accepted([
            Accepted(in_flight, "sarah", "sarah@example.com", ((sku, 2, 1000),), "EUR", datetime.now(UTC), None, "x"),
        ])
        for order_id in (in_flight, unknown):
            reserve = {"type": "ReserveLine", "order_id": order_id, "sku": sku, "quantity": 2}
            await produce(services.bootstrap, "stock-requests", sku.encode(), json.dumps(reserve).encode())

        async def settled() -> Any:
            table = await table_values(services, "inventory")
            holds = [table.get(f"{sku}\x1f{o}") for o in (in_flight, unknown)]
            return holds if holds[1] is not None and holds[1][1] == "released" else None

        # 2 held for each, the stray's given back; the early order's stay held for its saga
        early, stray = await eventually(settled, 30, "the stray order's units to go back")
        assert early is not None and early[:2] == [2, "held"], early

        async def projected() -> Any:  # the read model follows the table a moment later
            level = await api.stock(admin, sku)
            return level if (level["on_hand"], level["reserved"]) == (10, 2) else None

        await eventually(projected, 10, "the stock projection to show 2 held of 10")
    finally:
        await store.close()
    # its OrderPlaced arrives: the saga asks, is answered "held", and the order is confirmed on
    # the units kept for it
    await produce(services.bootstrap, "orders", in_flight.encode(), json.dumps(_placed(in_flight, sku, 2)).encode())
    assert (await api.decided(customer, in_flight))["status"] == "CONFIRMED"
    await eventually(projected, 10, "the stock projection to show 2 held of 10")


async def test_a_worker_set_up_for_another_partition_count_refuses_the_topics_and_says_how_to_run(
    services: Services,
) -> None:
    # Keys would land on other partitions than the tables hold them: never start on them.
    with pytest.raises(TopicMismatch, match=f"set ORION_PARTITIONS={PARTITIONS} to run on these topics"):
        await ensure_topics(services.bootstrap, PARTITIONS + 8)


async def test_an_accepted_orders_key_is_kept_when_the_projection_writes_the_order_meanwhile(
    services: Services,
) -> None:
    """The HTTP API pre-records an accepted order with its Idempotency-Key while the
    projection may be writing the same order. When the projection's row commits during the
    pre-record, the key must still land: else a retry, refused at a closed door because its
    key is unknown, is refused for an order that was accepted (seen under load in
    tests/e2e/test_overload.py)."""
    import asyncio
    from datetime import UTC, datetime

    from sqlalchemy import text

    store = SqlAlchemyStore(services.database_url, pool_size=2)
    order_id, key = f"race-{uuid.uuid4().hex}", f"k-{uuid.uuid4().hex}"
    try:
        async with store.engine.connect() as projection:
            # The projection's row, written but not committed yet.
            await projection.execute(text(
                "insert into orders (order_id, user_id, email, status, total, currency, version, created_at, "
                "updated_at) values (:o, 'sarah', 'sarah@example.com', 'PENDING', 1000, 'EUR', 1, now(), now())"),
                {"o": order_id})
            pre_record = asyncio.ensure_future(store.record_accepted([Accepted(
                order_id, "sarah", "sarah@example.com", (("T-001", 1, 1000),), "EUR", datetime.now(UTC), key, "h",
            )]))
            async def waiting_on_the_row() -> bool:  # the pre-record has met the row's lock
                async with store.engine.connect() as conn:
                    n = (await conn.execute(text(
                        "select count(*) from pg_locks where not granted and locktype = 'transactionid'"))).scalar()
                return bool(n)
            await eventually(waiting_on_the_row, 10, "the pre-record to wait on the projection's row")
            await projection.commit()
        await asyncio.wait_for(pre_record, 10)
        found = await store.find_by_idempotency_key("sarah", key)
        assert found is not None and found["order_id"] == order_id
    finally:
        await store.close()
