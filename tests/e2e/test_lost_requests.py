"""A request that was lost is asked again, on evidence, by the worker that owns the order.

The loss is made by hand: the sagas changelog gets the state of orders that wait for a
reservation and for a payment whose requests were never sent (as if the process had died
between the two, or a rebalance had dropped them). A worker that recovers those sagas
finds that the requests' topics were consumed past where they would be and no answer
came, sends them again, and the orders are decided.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest

from orion_streams import records
from orion_streams.agents.common import partition_for
from orion_streams.domain.catalog import Catalog
from orion_streams.domain.events import OrderPlaced
from orion_streams.domain.orders import OrderStatus, RequestedLine
from orion_streams.domain.saga import Clock, LineState, start

from ..integration.harness import (
    PARTITIONS,
    TEST_PRODUCTS,
    Api,
    Services,
    Worker,
    produce,
)


@pytest.fixture
async def api_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def _write_saga(services: Services, order_id: str, value: dict[str, object]) -> None:
    """Put a saga on the table's changelog, where a recovering worker reads it."""
    await produce(
        services.bootstrap, f"{services.app_id}-sagas-changelog", json.dumps(order_id).encode(),
        json.dumps(value).encode(), partition=partition_for(order_id, PARTITIONS),
    )


def _resent(text: str, request: str) -> float:
    match = re.search(rf'^orion_requests_resent_total\{{request="{request}"\}} ([0-9.]+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_lost_reservation_and_payment_requests_are_asked_again(
    fresh_services: Services, api_session: aiohttp.ClientSession,
) -> None:
    admin = fresh_services.token("mike", ("admin",))
    sku = TEST_PRODUCTS[0].sku
    first = Worker(fresh_services, "first").start()
    try:
        await Api(first.url, api_session).restock(admin, sku, 10)
    finally:
        first.stop()

    catalog = Catalog(TEST_PRODUCTS)
    now = Clock("2026-12-02T12:00:00.000Z", 1_796_212_800.0)
    # One order waits for its reservation, one (already reserved) for its payment.
    waiting_stock, waiting_payment = f"lost-{uuid.uuid4().hex}", f"lost-{uuid.uuid4().hex}"
    for order_id in (waiting_stock, waiting_payment):
        placed = OrderPlaced("e-" + order_id, order_id, "sarah", "sarah@example.com",
                             (RequestedLine(sku, 2),), "tok_ok", now.iso)
        saga, _ = start(placed, catalog, now)
        if order_id == waiting_payment:
            lines = tuple(replace(line, state=LineState.RESERVED) for line in saga.lines)
            saga = replace(saga, status=OrderStatus.RESERVED, lines=lines, paying=True)
        await _write_saga(fresh_services, order_id, {
            "saga": records.saga_to_value(saga), "correlation_id": f"c-{order_id}", "actor": "user:sarah",
            "actor_roles": "customer",
        })

    second = Worker(fresh_services, "second").start()
    try:
        api = Api(second.url, api_session)
        customer = fresh_services.token("sarah")
        reserved = await api.decided(customer, waiting_stock, timeout=60, final=("CONFIRMED",))
        paid = await api.decided(customer, waiting_payment, timeout=60, final=("CONFIRMED",))
        assert reserved["status"] == paid["status"] == "CONFIRMED"
        _, text, _ = await api.call("GET", "/metrics")
        assert _resent(text, "ReserveLine") == 1 and _resent(text, "AuthorizePayment") == 1, text
        # Only the order that asked for its stock holds any: the other one's hold was never made.
        level = await api.stock(admin, sku)
        assert (level["on_hand"], level["reserved"]) == (10, 2)
    finally:
        second.stop()
