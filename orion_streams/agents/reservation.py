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
    at = clock.iso
    stored = inventory.get(sku)
    level = records.stock_from_value(sku, stored)
    applied_offset, last_key, last_value = records.stock_entry_meta(stored)
    offset = position(event)
    # The stock row records the position (offset; and index, in a batch record) of the event
    # that last changed it and the hold written with it. If that event comes again (a crash
    # after the row reached the changelog but before the hold did), restore the hold; the
    # rules then see it and answer as before without moving stock. Any other redelivered
    # event finds its own hold.
    # Positions are compared for equality only: after a rebalance Faust can deliver a
    # partition's events out of order (agents/watchdog.py), so "older" proves nothing.
    replay = applied_offset == offset
    if replay and last_key and inventory.get(last_key) != last_value:
        inventory.put(event, last_key, last_value)

    if isinstance(command, c.AdjustStock):
        marker = records.adjustment_key(sku, command.adjustment_id)
        if inventory.get(marker):
            return  # redelivered adjustment: applied (or refused) already
        new_level, outputs = rules.adjust(level, command, at)
        hold_key = marker
        hold_value: Any = ["adjustment", "applied" if new_level is not level else "rejected", clock.epoch]
        closed = True
    else:
        hold_key = records.hold_key(sku, command.order_id)
        hold = records.hold_from_value(sku, command.order_id, inventory.get(hold_key))
        match command:
            case c.ReserveLine():
                new_level, new_hold, outputs = rules.reserve(level, hold, command, at)
            case c.ReleaseLine():
                new_level, new_hold, outputs = rules.release(level, hold, command, at)
            case c.CommitLine():
                new_level, new_hold, outputs = rules.commit(level, hold, command, at)
        closed = new_hold is not None and new_hold.state.is_final
        hold_value = (
            None if new_hold is None or new_hold == hold
            else records.hold_to_value(new_hold, closed_at=clock.epoch if closed else None)
        )
    if replay and new_level is not level:
        log.error("redelivered %s at %s would change stock again; ignored", type(command).__name__, offset)
        return
    headers = identity(event)
    for m in outputs:
        if isinstance(m, e.StockLevelChanged):
            # A hot SKU changes hundreds of times a batch; the live feed and the projection
            # want where it stands: the batch sends its last level, before its answers count.
            outbox.send_latest(*_route(m), m, headers)
        else:
            outbox.send(*_route(m), m, headers)
        _observe(m, changed=new_level is not level)
    if new_level is not level:
        inventory.put(event, sku, records.stock_entry(new_level, offset, hold_key if hold_value else None, hold_value))
    if hold_value is not None:
        inventory.put(event, hold_key, hold_value)
        if closed:
            retiring.ended(hold_key, clock.epoch)


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
