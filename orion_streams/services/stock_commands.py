"""What one stock command does to the inventory table, and the rule for a redelivered one.

The reservation agent (agents/reservation.py) is the single writer of a SKU's rows: the
stock row (key "sku") and one row per order's hold ("sku\\x1forder") or adjustment marker
("sku\\x1eadjustment"). `apply` decides, from what the table holds, which rows to write (in
that order), what to answer and whether stock moved; it reads the table and changes nothing,
so the agent stays a loop and the rule has tests of its own (tests/unit/test_stock_commands.py).

The replay rule. A batch's table changes reach the changelog after its answers, in the order
they were made, and its events are acknowledged only after that; a worker that dies in
between has its events delivered again, to a table that may hold some of their changes. The
stock row records the position of the event that last changed it (an offset; [offset,
index] for an item of a batch record) and the hold written with it, so:
- the event that last moved the stock, delivered again, finds its position on the row: if
  its hold did not reach the changelog (the row did), the hold is written again from the
  row, and the command is answered from the hold without moving stock;
- any other event delivered again finds its own hold (or marker) and is answered from it;
- an event at the row's own position that would still move stock is ignored: moving stock
  twice for one event would sell units twice.
Positions are compared for equality only: after a rebalance Faust can deliver a partition's
events out of order (agents/watchdog.py), so "older" proves nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import records
from ..domain import commands as c
from ..domain import stock as rules

StockCommand = c.ReserveLine | c.ReleaseLine | c.CommitLine | c.AdjustStock


@dataclass(slots=True)
class StockStep:
    """What handling one stock command comes to."""

    # (key, value) rows to write, in this order; None would be no row at all (never here).
    writes: list[tuple[str, Any]] = field(default_factory=list)
    # The answers and published events, in order.
    outputs: list[rules.StockEvent] = field(default_factory=list)
    # Whether the stock row changed (units held, released, sold or adjusted).
    moved: bool = False
    # A hold or adjustment marker that reached its end now: forget it a retention later.
    closed: str | None = None
    # Set when the command was ignored because it would move stock a second time (see the
    # replay rule): why, for the log.
    ignored: str | None = None


def apply(command: StockCommand, read: Callable[[str], Any], position: Any, closed_at: float, at: str) -> StockStep:
    """Handle `command` for its SKU: `read` gives a row of the table (None when absent),
    `position` where the command's event sits in its partition, `closed_at` (epoch seconds)
    and `at` (ISO) the time now."""
    sku = command.sku
    stored = read(sku)
    level = records.stock_from_value(sku, stored)
    applied, last_key, last_value = records.stock_entry_meta(stored)
    replay = applied == position
    step = StockStep()
    read_now: Callable[[str], Any] = read
    if replay and last_key and read(last_key) != last_value:
        # The row reached the changelog, the hold written with it did not: write it again.
        step.writes.append((last_key, last_value))
        restored = last_key

        def read_now(key: str) -> Any:
            return last_value if key == restored else read(key)

    hold_value: Any
    if isinstance(command, c.AdjustStock):
        hold_key = records.adjustment_key(sku, command.adjustment_id)
        if read_now(hold_key):
            return step  # delivered again: applied (or refused) already, nothing to answer
        new_level, outputs = rules.adjust(level, command, at)
        hold_value = ["adjustment", "applied" if new_level is not level else "rejected", closed_at]
        closed = True
    else:
        hold_key = records.hold_key(sku, command.order_id)
        hold = records.hold_from_value(sku, command.order_id, read_now(hold_key))
        new_level, new_hold, outputs = rules.apply(level, hold, command, at)
        closed = new_hold is not None and new_hold.state.is_final
        hold_value = (
            None if new_hold is None or new_hold == hold
            else records.hold_to_value(new_hold, closed_at=closed_at if closed else None)
        )
    moved = new_level is not level
    if replay and moved:
        step.ignored = f"redelivered {type(command).__name__} at {position} would change stock again"
        return step
    step.outputs, step.moved = outputs, moved
    if moved:
        step.writes.append((sku, records.stock_entry(new_level, position, hold_key if hold_value else None, hold_value)))
    if hold_value is not None:
        step.writes.append((hold_key, hold_value))
        if closed:
            step.closed = hold_key
    return step
