"""Kill a worker with SIGKILL in the middle of a rush: the survivor takes over its
partitions, every accepted order is decided, nothing is oversold or lost."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import aiohttp
from sqlalchemy import text

from orion_streams.adapters.postgres import SqlAlchemyStore

from ..integration.harness import (
    Api,
    Services,
    Worker,
    eventually,
    group_lag,
    stock_totals,
    table_values,
)

STOCK = 50
ORDERS = 120
CLIENTS = 10
# The shipped session timeout (10 s): the dead worker's partitions move within seconds.
FAST_FAILOVER = {"ORION_STANDBY_REPLICAS": os.environ.get("SB", "1")}
# Every card is good and every request the dead worker had in hand is asked again on evidence
# of its loss, so the units sell out exactly: the rest are rejected for stock, none fail.
DECIDED = ("CONFIRMED", "REJECTED", "PAYMENT_FAILED")


async def test_worker_killed_mid_rush_loses_nothing(fresh_services: Services) -> None:
    services = fresh_services
    a = Worker(services, "a", FAST_FAILOVER).start()
    b = None
    try:
        b = Worker(services, "b", FAST_FAILOVER).start()
        admin, customer = services.token("mike", ("admin",)), services.token("sarah")
        async with aiohttp.ClientSession() as session:
            api_a, api_b = Api(a.url, session), Api(b.url, session)
            await api_a.restock(admin, "T-001", STOCK)
            accepted: list[str] = []
            queue = list(range(ORDERS))

            async def client(n: int) -> None:
                while queue:
                    i = queue.pop()
                    # Half the traffic enters through b until b dies; a takes all of it after.
                    target = api_b if i % 2 and b is not None and b.proc and b.proc.poll() is None else api_a
                    # A client whose worker dies mid-request retries elsewhere with the same
                    # Idempotency-Key: the order may already be in Kafka without a reply.
                    key = {"Idempotency-Key": f"rush-{i}"}
                    try:
                        status, body, _ = await target.place(customer, [{"sku": "T-001", "quantity": 1}], headers=key)
                    except aiohttp.ClientError:
                        status, body, _ = await api_a.place(customer, [{"sku": "T-001", "quantity": 1}], headers=key)
                    for _ in range(60):
                        if status != 503:
                            break
                        # Refused at the door while the takeover slows decisions down: a real
                        # client comes back later with the same key.
                        await asyncio.sleep(0.5)  # the client's back-off, not a synchronisation
                        status, body, _ = await api_a.place(customer, [{"sku": "T-001", "quantity": 1}], headers=key)
                    assert status == 202, body
                    accepted.append(body["order_id"])
                    if len(accepted) == ORDERS // 3 and b is not None:
                        b.kill()

            await asyncio.gather(*(client(n) for n in range(CLIENTS)))
            assert len(accepted) == ORDERS and b is not None and b.proc is not None
            assert b.proc.poll() is not None

            store = SqlAlchemyStore(services.database_url, pool_size=2)
            seen: dict[str, str] = {}
            try:
                async def decided() -> Any:
                    async with store.engine.connect() as conn:
                        rows = dict((await conn.execute(
                            text("select order_id, status from orders where order_id = any(:ids)"),
                            {"ids": accepted})).all())
                    seen.clear()
                    seen.update(rows)
                    done = len(rows) == ORDERS and all(s in DECIDED for s in rows.values())
                    return rows if done else None

                try:
                    statuses = await eventually(decided, 90, "every accepted order to be decided", interval=0.5)
                except AssertionError as exc:
                    from collections import Counter

                    stuck = [oid for oid, st in seen.items() if st not in DECIDED]
                    os.kill(a.proc.pid, signal.SIGUSR1)  # the worker logs its task stacks
                    sagas = await table_values(services, "sagas")
                    in_table = Counter(sagas[oid]["saga"]["status"] if oid in sagas else "absent" for oid in stuck)
                    raise AssertionError(
                        f"{exc}: {Counter(seen.values())}, {ORDERS - len(seen)} missing; "
                        f"the saga table says of the stuck ones: {in_table}; lag: {await group_lag(services)}"
                    ) from None
                confirmed = sum(s == "CONFIRMED" for s in statuses.values())
                assert "PAYMENT_FAILED" not in statuses.values(), statuses
                assert confirmed == STOCK, (confirmed, STOCK)

                async def converged() -> Any:
                    pg = await stock_totals(store)
                    return pg if pg.get("T-001") == (STOCK, confirmed) else None

                await eventually(converged, 30, f"PostgreSQL stock to show {confirmed} held")
            finally:
                await store.close()
            table = await table_values(services, "inventory")
            assert tuple(table["T-001"][:2]) == (STOCK, confirmed)
            level = await api_a.stock(customer, "T-001")
            assert level["available"] == STOCK - confirmed and level["reserved"] == confirmed
    finally:
        if b is not None:
            b.stop()
        a.stop()
