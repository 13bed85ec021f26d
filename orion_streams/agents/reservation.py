"""The reservation agent: the only writer of stock, one SKU at a time.

A hold that reached its end (released, sold, rejected) and an adjustment marker are kept
a retention, so repeated commands find them and change nothing, then removed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust

from .. import logs, metrics, records
from .. import topics as t
from ..app import (
    app,
    order_events_topic,
    runtime,
    settings,
    stock_levels_topic,
    stock_requests_topic,
)
from ..domain import commands as c
from ..domain import events as e
from ..domain import stock as rules
from ..services import stock_commands
from ..services.retirement import RetirementQueue
from ..tables import inventory
from .common import (
    Outbox,
    dead_letter,
    handle_in_batches,
    identity,
    key_text,
    now,
    partition_for,
    position,
)

log = logging.getLogger("orion.reservation")
# Closed holds and adjustment markers to forget, and the partitions they are tracked for.
retiring = RetirementQueue(settings.order_retention)
_tracked: set[int] = set()
_HOLD, _ADJUSTMENT = "\x1f", "\x1e"  # separators of hold and adjustment-marker keys


def _route(message: rules.StockEvent) -> tuple[faust.TopicT, str]:
    if isinstance(message, e.LineReserved | e.LineRejected | e.LineReleased | e.LineCommitted):
        return order_events_topic, message.order_id
    return stock_levels_topic, message.sku


def _sku_class(sku: str) -> str:
    product = runtime.catalog.get(sku)
    return product.category if product is not None else "unknown"


def _observe(message: rules.StockEvent, *, changed: bool) -> None:
    """Count and log what this command did; a repeated ask answered from its hold moved
    no stock and is not counted again."""
    match message:
        case e.LineReserved() if changed:
            metrics.labelled(metrics.RESERVATIONS, _sku_class(message.sku), "accepted").inc()
            logs.order_info(log, "reserved %d of %s", message.quantity, message.sku)
        case e.LineRejected():
            metrics.labelled(metrics.RESERVATIONS, _sku_class(message.sku), "rejected").inc()
            logs.order_info(log, "refused %d of %s (%d available): %s", message.quantity, message.sku, message.available, message.reason)
        case e.LineReleased() if changed:
            logs.order_info(log, "released %d of %s", message.quantity, message.sku)
        case e.LineCommitted() if changed:
            logs.order_info(log, "sold %d of %s", message.quantity, message.sku)
        case e.LowStockDetected():
            metrics.LOW_STOCK_ALERTS.inc()
            log.warning("low stock of %s: %d available (threshold %d)", message.sku, message.available, message.low_stock_threshold)


@app.agent(stock_requests_topic, concurrency=1)
async def reserve_stock(stream: faust.StreamT[bytes]) -> None:
    """Apply stock commands for the SKUs of this worker's partitions."""
    await handle_in_batches(stream, handle_event, inventory, what="reservation agent", housekeeping=housekeeping)


async def handle_event(event: Any, outbox: Outbox) -> None:
    sku = key_text(event)
    try:
        command = records.decode(event.value)
    except records.BadRecord as exc:
        await dead_letter(event, str(exc), kind="bad_record")
        return
    if not isinstance(command, c.ReserveLine | c.ReleaseLine | c.CommitLine | c.AdjustStock):
        await dead_letter(event, f"{type(command).__name__} does not belong on stock-requests", kind="wrong_topic")
        return
    if command.sku != sku:
        await dead_letter(event, "the message key must equal its sku", kind="wrong_key")
        return
    logs.bind(sku=sku, order_id=getattr(command, "order_id", None))
    clock = now()
    step = stock_commands.apply(command, inventory.get, position(event), clock.epoch, clock.iso)
    for key, value in step.writes:
        inventory.put(event, key, value)
    if step.ignored is not None:
        log.error("%s; ignored", step.ignored)
        return
    headers = identity(event)
    for m in step.outputs:
        if isinstance(m, e.StockLevelChanged):
            # A hot SKU changes hundreds of times a batch; the live feed and the projection
            # want where it stands: the batch sends its last level, before its answers count.
            outbox.send_latest(*_route(m), m, headers)
        else:
            outbox.send(*_route(m), m, headers)
        _observe(m, changed=step.moved)
    if step.closed is not None:
        retiring.ended(step.closed, clock.epoch)


def _owned() -> set[int] | None:
    """The stock-requests partitions this worker owns; None during a rebalance or recovery."""
    if app.rebalancing or not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
        return None
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == t.STOCK_REQUESTS.name}


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


async def housekeeping(outbox: Outbox) -> None:
    """Forget holds and markers whose retention ran out; on a new assignment, find the
    closed ones of the new partitions first (one pass over the recovered table)."""
    global _tracked
    owned = _owned()
    if owned is None:
        return
    gained = owned - _tracked
    _tracked = owned
    wall = time.time()
    if gained:
        for key, value in list(inventory.items()):
            sku = _sku_of(key)
            if sku is not None and partition_for(sku, settings.partitions) in gained and _closed(value):
                retiring.ended(key, records.closed_at(value) or wall)
    for key in retiring.due(wall):
        sku = _sku_of(key)
        value = inventory.get(key)
        if sku is None or not _closed(value):
            continue
        partition = partition_for(sku, settings.partitions)
        closed_at = records.closed_at(value)
        if partition not in _tracked or (closed_at is not None and closed_at + settings.order_retention > wall):
            continue
        inventory.remove(key, partition)
        metrics.STATE_RETIRED.labels("adjustments" if _ADJUSTMENT in key else "holds").inc()
