"""Metrics read from the worker's own Faust state: consumer lag, low stock, table recovery."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import faust
from faust.types import TP
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import internals, metrics, records
from .. import topics as t
from .common import partition_for

if TYPE_CHECKING:
    from aiokafka import TopicPartition

    from ..app import Orion
    from ..tables import DurableTable
    from . import Agents

# Topics whose events this worker's agents process (changelogs are recovery, not lag).
_SOURCES = frozenset(spec.name for spec in t.PIPELINE)


class ConsumerLag(Collector):
    """Events waiting per source partition this worker owns: log end minus committed offset,
    and the projection's (a consumer group of its own, maybe in its own process)."""

    def __init__(self, app: faust.App, projection_lag: Callable[[], dict[TopicPartition, int]]) -> None:
        self.app, self.projection_lag = app, projection_lag

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "orion_consumer_lag", "Events not yet processed, per topic and partition this worker owns",
            labels=["topic", "partition"],
        )
        for tp, lag in sorted(self.consumer_lag().items()):
            family.add_metric([tp.topic, str(tp.partition)], lag)
        yield family

    def consumer_lag(self) -> dict[TP, int]:
        app: Any = self.app
        consumer: Any = app.consumer
        try:
            assigned = consumer.assignment()
            committed = internals.committed_offsets(consumer)
        except Exception:  # not started, or between rebalances
            return {}
        lags = {}
        for tp in assigned:
            if tp.topic not in _SOURCES or tp in app.assignor.assigned_standbys():
                continue
            try:
                end = consumer.highwater(tp)
            except Exception:
                continue
            if end is None:  # no fetch answered for it yet
                continue
            # Nothing committed yet: everything from the start waits (as Kafka's tools count it).
            position = committed.get(tp) or 0
            lags[tp] = max(0, end - position)
        for tp, lag in self.projection_lag().items():
            lags[TP(tp.topic, tp.partition)] = lag
        return lags


class LowStock(Collector):
    """Available stock of the SKUs this worker owns that are at or below their threshold."""

    def __init__(self, app: faust.App, inventory: DurableTable, partitions: int) -> None:
        self.app, self.inventory, self.partitions = app, inventory, partitions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        available = GaugeMetricFamily(
            "orion_stock_available", "Available units of SKUs at or below their low-stock threshold",
            labels=["sku"],
        )
        threshold = GaugeMetricFamily(
            "orion_stock_low_threshold", "Low-stock threshold of the SKUs in orion_stock_available",
            labels=["sku"],
        )
        for level in self.low_stock():
            available.add_metric([level.sku], level.available)
            threshold.add_metric([level.sku], level.low_stock_threshold)
        yield available
        yield threshold

    def low_stock(self) -> list[Any]:
        try:
            owned = {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == t.STOCK_REQUESTS.name}
            entries = list(self.inventory.items())
        except Exception:  # not started, or between rebalances
            return []
        out = []
        for key, value in entries:
            if not value or "\x1f" in key or "\x1e" in key:  # holds and adjustment markers
                continue
            if partition_for(key, self.partitions) not in owned:
                continue
            level = records.stock_from_value(key, value)
            if level.low_stock_threshold > 0 and level.available <= level.low_stock_threshold:
                out.append(level)
        return sorted(out, key=lambda lvl: lvl.sku)


class StateSizes(Collector):
    """How much state this worker keeps: it stays flat when finished orders are retired."""

    def __init__(self, tables: dict[str, DurableTable], outstanding: Callable[[], int]) -> None:
        self.tables, self.outstanding = tables, outstanding

    def collect(self) -> Iterator[GaugeMetricFamily]:
        entries = GaugeMetricFamily(
            "orion_table_entries", "Entries in this worker's copy of each table (active and standby partitions)",
            labels=["table"],
        )
        for name, table in self.tables.items():
            try:
                entries.add_metric([name], len(table))
            except Exception:  # not started yet
                continue
        yield entries
        yield GaugeMetricFamily(
            "orion_requests_outstanding", "Requests of this worker's orders waiting for an answer", value=self.outstanding(),
        )


class RecoveryTimer(faust.Sensor):
    """From each rebalance to the end of its table recovery (Faust ends a rebalance there)."""

    def on_rebalance_start(self, app: faust.types.AppT) -> dict[str, Any]:
        metrics.RECOVERING.set(1)
        return {"started": time.monotonic()}

    def on_rebalance_end(self, app: faust.types.AppT, state: dict[str, Any]) -> None:
        metrics.RECOVERING.set(0)
        started = state.get("started")
        if started is not None:
            metrics.TABLE_RECOVERY.observe(time.monotonic() - started)


def register(orion: Orion, agents: Agents) -> None:
    """The worker's collectors (read at scrape time) and its rebalance sensor."""
    app, tables = orion.app, orion.tables
    metrics.register_collector(ConsumerLag(app, agents.projection.lag))
    metrics.register_collector(LowStock(app, tables.inventory, orion.settings.partitions))
    metrics.register_collector(StateSizes(
        {"sagas": tables.sagas, "inventory": tables.inventory}, lambda: len(agents.saga.waiting),
    ))
    app.sensors.add(RecoveryTimer())
