"""The reservation agent: the only writer of stock, one SKU at a time.

A hold that reached its end (released, sold, rejected) and an adjustment marker are kept
a retention, so repeated commands find them and change nothing, then removed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import faust

from .. import logs, metrics, records
from .. import topics as t
from ..domain import commands as c
from ..domain import events as e
from ..domain import stock as rules
from ..services import stock_commands
from ..services.retirement import RetirementQueue
from .common import (
    Assignment,
    Bus,
    Outbox,
    handle_in_batches,
    identity,
    key_text,
    now,
    partition_for,
    position,
)

if TYPE_CHECKING:
    from ..app import Orion
    from ..config import Settings
    from ..domain.catalog import Catalog
    from ..tables import DurableTable

log = logging.getLogger("orion.reservation")
_HOLD, _ADJUSTMENT = "\x1f", "\x1e"  # separators of hold and adjustment-marker keys


def _route(message: rules.StockEvent) -> tuple[str, str]:
    if isinstance(message, e.LineReserved | e.LineRejected | e.LineReleased | e.LineCommitted):
        return t.ORDER_EVENTS.name, message.order_id
    return t.STOCK_LEVELS.name, message.sku


def _sku_class(catalog: Catalog, sku: str) -> str:
    product = catalog.get(sku)
    return product.category if product is not None else "unknown"


def _observe(catalog: Catalog, message: rules.StockEvent, *, changed: bool) -> None:
    """Count and log what this command did; a repeated ask answered from its hold moved
    no stock and is not counted again."""
    match message:
        case e.LineReserved() if changed:
            metrics.labelled(metrics.RESERVATIONS, _sku_class(catalog, message.sku), "accepted").inc()
            logs.order_info(log, "reserved %d of %s", message.quantity, message.sku)
        case e.LineRejected():
            metrics.labelled(metrics.RESERVATIONS, _sku_class(catalog, message.sku), "rejected").inc()
            logs.order_info(log, "refused %d of %s (%d available): %s", message.quantity, message.sku, message.available, message.reason)
        case e.LineReleased() if changed:
            logs.order_info(log, "released %d of %s", message.quantity, message.sku)
        case e.LineCommitted() if changed:
            logs.order_info(log, "sold %d of %s", message.quantity, message.sku)
        case e.LowStockDetected():
            metrics.LOW_STOCK_ALERTS.inc()
            log.warning("low stock of %s: %d available (threshold %d)", message.sku, message.available, message.low_stock_threshold)


def _sku_of(key: str) -> str | None:
    """The SKU of a hold or adjustment-marker key; None for a stock row."""
    for separator in (_HOLD, _ADJUSTMENT):
        if separator in key:
            return key.split(separator, 1)[0]
    return None


def _closed(value: Any) -> bool:
    """A stored hold or marker that nothing will change any more."""
    if not isinstance(value, list) or len(value) < 2:
        return False
    return bool(value[0] == "adjustment" or value[1] != rules.HoldState.HELD.value)


class ReservationAgent:
    """Applies stock commands for the SKUs of this worker's partitions: the only writer of
    the `inventory` table. Closed holds and adjustment markers are forgotten after the
    retention; `_tracked` are the partitions they are tracked for."""

    def __init__(
        self, settings: Settings, catalog: Callable[[], Catalog], inventory: DurableTable, bus: Bus,
        assignment: Assignment,
    ) -> None:
        self.settings, self.catalog, self.inventory, self.bus, self.assignment = (
            settings, catalog, inventory, bus, assignment)
        self.retiring = RetirementQueue(settings.order_retention)
        self._tracked: set[int] = set()

    async def handle_event(self, event: Any, outbox: Outbox) -> None:
        sku = key_text(event)
        try:
            command = records.decode(event.value)
        except records.BadRecord as exc:
            await self.bus.dead_letter(event, str(exc), kind="bad_record")
            return
        if not isinstance(command, c.ReserveLine | c.ReleaseLine | c.CommitLine | c.AdjustStock):
            await self.bus.dead_letter(event, f"{type(command).__name__} does not belong on stock-requests", kind="wrong_topic")
            return
        if command.sku != sku:
            await self.bus.dead_letter(event, "the message key must equal its sku", kind="wrong_key")
            return
        logs.bind(sku=sku, order_id=getattr(command, "order_id", None))
        clock = now()
        step = stock_commands.apply(command, self.inventory.get, position(event), clock.epoch, clock.iso)
        for key, value in step.writes:
            self.inventory.put(event, key, value)
        if step.ignored is not None:
            log.error("%s; ignored", step.ignored)
            return
        headers = identity(event)
        catalog = self.catalog()
        for m in step.outputs:
            if isinstance(m, e.StockLevelChanged):
                # A hot SKU changes hundreds of times a batch; the live feed and the projection
                # want where it stands: the batch sends its last level, before its answers count.
                outbox.send_latest(*_route(m), m, headers)
            else:
                outbox.send(*_route(m), m, headers)
            _observe(catalog, m, changed=step.moved)
        if step.closed is not None:
            self.retiring.ended(step.closed, clock.epoch)

    async def housekeeping(self, outbox: Outbox) -> None:
        """Forget holds and markers whose retention ran out; on a new assignment, find the
        closed ones of the new partitions first (one pass over the recovered table)."""
        owned = self.assignment.owned(t.STOCK_REQUESTS.name)
        if owned is None:
            return
        gained = owned - self._tracked
        self._tracked = owned
        wall = time.time()
        if gained:
            for key, value in list(self.inventory.items()):
                sku = _sku_of(key)
                if sku is not None and partition_for(sku, self.settings.partitions) in gained and _closed(value):
                    self.retiring.ended(key, records.closed_at(value) or wall)
        for key in self.retiring.due(wall):
            sku = _sku_of(key)
            value = self.inventory.get(key)
            if sku is None or not _closed(value):
                continue
            partition = partition_for(sku, self.settings.partitions)
            closed_at = records.closed_at(value)
            if partition not in self._tracked or (closed_at is not None and closed_at + self.settings.order_retention > wall):
                continue
            self.inventory.remove(key, partition)
            metrics.STATE_RETIRED.labels("adjustments" if _ADJUSTMENT in key else "holds").inc()


def register(orion: Orion) -> ReservationAgent:
    """The reservation agent, on `stock-requests`."""
    runtime = orion.runtime
    agent = ReservationAgent(orion.settings, lambda: runtime.catalog, orion.tables.inventory, orion.bus, orion.assignment)

    async def reserve_stock(stream: faust.StreamT[bytes]) -> None:
        """Apply stock commands for the SKUs of this worker's partitions."""
        await handle_in_batches(
            stream, agent.handle_event, orion.bus, agent.inventory, what="reservation agent",
            housekeeping=agent.housekeeping,
        )

    orion.app.agent(
        orion.source(t.STOCK_REQUESTS.name), name="orion_streams.agents.reservation.reserve_stock", concurrency=1,
    )(reserve_stock)
    return agent
