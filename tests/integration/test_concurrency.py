"""Many clients racing for one SKU: exactly the stocked units are sold, never more."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import aiohttp
from sqlalchemy import text

from orion_streams.adapters.postgres import SqlAlchemyStore

from .harness import Api, Services, Worker, eventually, read_messages, stock_totals, table_values

CLIENTS = 30
SINGLE = 300
MULTI = 30
DECLINED = 20
HOT_STOCK = 100
OTHER_STOCK = 1_000
FAILED = ("REJECTED", "PAYMENT_FAILED", "CANCELLED")


async def test_three_hundred_orders_race_for_one_hundred_units(
    services: Services, worker: Worker, api: Api, admin: str, fresh_sku: Any
) -> None:
    hot, other = fresh_sku(), fresh_sku()
    await api.restock(admin, hot, HOT_STOCK)
    await api.restock(admin, other, OTHER_STOCK)

    jobs: asyncio.Queue[tuple[str, list[dict[str, Any]], str]] = asyncio.Queue()
    for i in range(SINGLE):
        jobs.put_nowait((f"racer-{i % CLIENTS}", [{"sku": hot, "quantity": 1}], "tok_ok"))
        if i % 10 == 0:
            jobs.put_nowait((f"racer-{i % CLIENTS}", [{"sku": hot, "quantity": 1}, {"sku": other, "quantity": 2}], "tok_ok"))
            # Declines stay off the hot SKU: a declined order holds its units until payment
            # fails, and a rival rejected meanwhile would leave them unsold at the end.
            jobs.put_nowait((f"racer-{i % CLIENTS}", [{"sku": other, "quantity": 3}], "tok_declined"))
    total_jobs = jobs.qsize()
    assert total_jobs == SINGLE + MULTI + DECLINED + 10  # 31 of each kind of mixed order
    latencies: list[float] = []
    placed: dict[str, tuple[list[dict[str, Any]], str]] = {}

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            mine = Api(worker.url, session)
            while not jobs.empty():
                user, lines, payment = jobs.get_nowait()
                started = time.perf_counter()
                status, body, _ = await mine.place(services.token(user), lines, payment)
                latencies.append(time.perf_counter() - started)
                assert status == 202, body
                placed[body["order_id"]] = (lines, payment)

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    assert len(placed) == total_jobs

    store = SqlAlchemyStore(services.database_url, pool_size=2)
    try:
        async def settled() -> Any:
            async with store.engine.connect() as conn:
                rows = (await conn.execute(
                    text("select order_id, status from orders where order_id = any(:ids)"),
                    {"ids": list(placed)},
                )).all()
            statuses = dict(rows)
            done = len(statuses) == len(placed) and all(s in ("CONFIRMED", *FAILED) for s in statuses.values())
            return statuses if done else None

        statuses = await eventually(settled, 120, "every order to be decided", interval=0.5)

        sold_hot = sum(
            line["quantity"] for oid, (lines, _) in placed.items() if statuses[oid] == "CONFIRMED"
            for line in lines if line["sku"] == hot
        )
        held_other = sum(
            line["quantity"] for oid, (lines, _) in placed.items() if statuses[oid] == "CONFIRMED"
            for line in lines if line["sku"] == other
        )
        from collections import Counter
        assert sold_hot == HOT_STOCK, f"sold {sold_hot} of {HOT_STOCK}: {Counter(statuses.values())}"
        assert all(statuses[oid] == "PAYMENT_FAILED" for oid, (_, pay) in placed.items() if pay == "tok_declined")
        confirmed_with_hot = [oid for oid, (lines, _) in placed.items()
                              if statuses[oid] == "CONFIRMED" and any(x["sku"] == hot for x in lines)]
        assert len(confirmed_with_hot) == HOT_STOCK  # one unit each: 100 winners, 260 losers

        async def converged() -> Any:
            pg = await stock_totals(store)
            return pg if pg[hot] == (HOT_STOCK, sold_hot) and pg[other] == (OTHER_STOCK, held_other) else None

        pg = await eventually(converged, 30, "PostgreSQL stock to converge")
    finally:
        await store.close()

    table = await table_values(services, "inventory")
    for sku in (hot, other):
        on_hand, reserved = table[sku][:2]
        assert (on_hand, reserved) == pg[sku]

    # Available never went negative at any moment: check every level the owner published.
    levels = await read_messages(services.bootstrap, "stock-levels")
    hot_levels = [lv for lv in levels if isinstance(lv, dict) and lv.get("type") == "StockLevelChanged"
                  and lv["sku"] == hot]
    assert hot_levels and all(0 <= lv["reserved"] <= lv["on_hand"] for lv in hot_levels)
    assert [lv["version"] for lv in hot_levels] == sorted({lv["version"] for lv in hot_levels})

    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    report = f"POST /v1/orders over {len(latencies)} requests from {CLIENTS} clients: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    print(report)
    (services.state_dir / "concurrency-latency.txt").write_text(report + "\n")
