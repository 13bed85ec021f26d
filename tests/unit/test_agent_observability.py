"""The worker's collectors (agents/observability.py) on a fake app: consumer lag, low stock and
state sizes, as a scrape reads them."""

from __future__ import annotations

from typing import Any, cast

from aiokafka import TopicPartition
from faust.types import TP

from orion_streams import records
from orion_streams import topics as t
from orion_streams.agents.observability import ConsumerLag, LowStock, StateSizes
from orion_streams.domain.stock import StockLevel
from orion_streams.partitioner import partition_for

from .fakes import PARTITIONS, FakeApp, FakeTable


def samples(collector: Any) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (sample.name, tuple(sample.labels.values())): sample.value
        for family in collector.collect() for sample in family.samples
    }


def test_consumer_lag_is_the_log_end_minus_the_commit_of_each_active_source_partition() -> None:
    app = FakeApp()
    consumer = app.consumer
    orders, events, standby = TP(t.ORDERS.name, 0), TP(t.ORDER_EVENTS.name, 1), TP(t.ORDERS.name, 2)
    consumer.assign(orders, committed=7, position=7, end=10)
    consumer.assign(events, committed=0, position=0, end=4)
    del consumer._committed_offset[events]  # nothing committed yet: everything waits
    consumer.assign(standby, committed=0, position=0, end=50)
    app.assignor.standbys = {standby}
    consumer.assign(TP("orion-sagas-changelog", 0), committed=0, position=0, end=99)  # recovery, not lag
    consumer.assign(TP(t.ORDERS.name, 5), committed=0, position=0, end=0)
    del consumer.ends[TP(t.ORDERS.name, 5)]  # no fetch answered for it yet
    projection = {TopicPartition(t.ORDER_STATUS.name, 3): 12}
    lag = ConsumerLag(cast(Any, app), lambda: projection)
    assert lag.consumer_lag() == {orders: 3, events: 4, TP(t.ORDER_STATUS.name, 3): 12}
    assert samples(lag)[("orion_consumer_lag", (t.ORDERS.name, "0"))] == 3


def test_consumer_lag_of_a_consumer_not_started_is_empty() -> None:
    app = FakeApp()
    app.consumer.broken = RuntimeError("not started")
    assert ConsumerLag(cast(Any, app), dict).consumer_lag() == {}


def skus_on(partition: int, count: int) -> list[str]:
    """`count` SKUs of the given stock-requests partition."""
    return [sku for sku in (f"SKU-{i}" for i in range(1000)) if partition_for(sku, PARTITIONS) == partition][:count]


def test_low_stock_lists_the_owned_skus_at_or_below_their_threshold() -> None:
    app = FakeApp()
    (low, fine, unwatched), [elsewhere] = skus_on(0, 3), skus_on(1, 1)
    app.assignor.actives = {TP(t.STOCK_REQUESTS.name, 0), TP(t.ORDERS.name, 1)}

    def row(sku: str, on_hand: int, reserved: int, threshold: int) -> list[Any]:
        return records.stock_entry(StockLevel(sku, on_hand, reserved, threshold, 1), None, None, None)

    inventory = FakeTable({
        low: row(low, 10, 8, 2),  # 2 available, threshold 2: low
        fine: row(fine, 10, 0, 2),
        unwatched: row(unwatched, 0, 0, 0),  # no threshold: never low
        elsewhere: row(elsewhere, 1, 1, 5),  # low, but another worker's SKU
        records.hold_key(low, "o-1"): [8, "held"],
    })
    collector = LowStock(cast(Any, app), cast(Any, inventory), PARTITIONS)
    assert [(level.sku, level.available) for level in collector.low_stock()] == [(low, 2)]
    assert samples(collector) == {("orion_stock_available", (low,)): 2, ("orion_stock_low_threshold", (low,)): 2}


def test_state_sizes_count_each_table_and_the_requests_awaited() -> None:
    collector = StateSizes({"sagas": cast(Any, FakeTable({"o-1": {}, "o-2": {}})), "inventory": cast(Any, FakeTable())},
                           lambda: 7)
    assert samples(collector) == {
        ("orion_table_entries", ("sagas",)): 2, ("orion_table_entries", ("inventory",)): 0,
        ("orion_requests_outstanding", ()): 7,
    }
