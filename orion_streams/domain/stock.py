"""Stock per SKU and the holds orders place on it: reserve, release, commit, adjust.

Each function takes the SKU's level and the order's hold (or None) and returns the new
level, the new hold and the events, so the single writer of a SKU can apply them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .commands import AdjustStock, CommitLine, ReleaseLine, ReserveLine
from .events import (
    AdjustmentRejected,
    LineCommitted,
    LineRejected,
    LineReleased,
    LineReserved,
    LowStockDetected,
    StockAdjusted,
    StockLevelChanged,
)
from .values import evolve

ADJUSTMENT_REASONS = frozenset({"restock", "correction", "damage", "return", "seed"})


@dataclass(frozen=True)
class StockLevel:
    """Units of one SKU: on hand, held by orders, and when that counts as low."""

    sku: str
    on_hand: int = 0
    reserved: int = 0
    low_stock_threshold: int = 0
    version: int = 0

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    @property
    def low_stock(self) -> bool:
        return self.available <= self.low_stock_threshold

    def changed(self, at: str) -> StockLevelChanged:
        return StockLevelChanged(
            self.sku, self.on_hand, self.reserved, self.low_stock_threshold, self.version, at
        )


class HoldState(StrEnum):
    """What became of an order's request for a SKU."""

    HELD = "held"
    REJECTED = "rejected"
    RELEASED = "released"
    COMMITTED = "committed"

    @property
    def is_final(self) -> bool:
        """Nothing more will change it: only a held hold waits for a release or a sale."""
        return self is not HoldState.HELD


@dataclass(frozen=True)
class Hold:
    """An order's claim on one SKU. Kept after release so redelivery changes nothing."""

    order_id: str
    sku: str
    quantity: int
    state: HoldState


StockEvent = (
    LineReserved
    | LineRejected
    | LineReleased
    | LineCommitted
    | StockLevelChanged
    | LowStockDetected
    | StockAdjusted
    | AdjustmentRejected
)
Outcome = tuple[StockLevel, Hold | None, list[StockEvent]]


def _bump(before: StockLevel, after: StockLevel, at: str) -> tuple[StockLevel, list[StockEvent]]:
    after = evolve(after, version=before.version + 1)
    events: list[StockEvent] = [after.changed(at)]
    if after.low_stock and not before.low_stock:
        events.append(
            LowStockDetected(after.sku, after.available, after.low_stock_threshold, at, after.version)
        )
    return after, events


def reserve(level: StockLevel, hold: Hold | None, cmd: ReserveLine, at: str) -> Outcome:
    """Hold units if available covers the line; all or nothing for this line."""
    if hold is not None:
        # Asked again (redelivered, or re-asked after a lost answer): say where the hold
        # stands now and change nothing. LineReserved always means units are held now.
        return level, hold, [_state_of(hold, cmd.order_id, cmd.sku, level)]
    if cmd.quantity <= 0:
        raise ValueError("quantity must be positive")
    if cmd.quantity > level.available:
        reason = (
            f"{cmd.sku} out of stock: requested {cmd.quantity}, available {max(level.available, 0)}"
        )
        rejected = Hold(cmd.order_id, cmd.sku, cmd.quantity, HoldState.REJECTED)
        return level, rejected, [
            LineRejected(cmd.order_id, cmd.sku, cmd.quantity, level.available, reason)
        ]
    new, events = _bump(level, evolve(level, reserved=level.reserved + cmd.quantity), at)
    held = Hold(cmd.order_id, cmd.sku, cmd.quantity, HoldState.HELD)
    return new, held, [LineReserved(cmd.order_id, cmd.sku, cmd.quantity), *events]


def _state_of(hold: Hold, order_id: str, sku: str, level: StockLevel) -> StockEvent:
    """The answer that tells where an existing hold stands."""
    match hold.state:
        case HoldState.HELD:
            return LineReserved(order_id, sku, hold.quantity)
        case HoldState.REJECTED:
            return LineRejected(order_id, sku, hold.quantity, level.available, "out of stock")
        case HoldState.RELEASED:
            return LineReleased(order_id, sku, hold.quantity)
        case HoldState.COMMITTED:
            return LineCommitted(order_id, sku, hold.quantity)


def release(level: StockLevel, hold: Hold | None, cmd: ReleaseLine, at: str) -> Outcome:
    """Return a held quantity; a release with no hold leaves a tombstone so a late
    reservation for the same order and SKU is answered without holding stock. A release
    of a hold that holds nothing is answered with where it stands."""
    if hold is None:
        released = Hold(cmd.order_id, cmd.sku, 0, HoldState.RELEASED)
        return level, released, [LineReleased(cmd.order_id, cmd.sku, 0)]
    if hold.state is not HoldState.HELD:
        # Every command gets an answer, so a sender waiting for one can settle.
        return level, hold, [_state_of(hold, cmd.order_id, cmd.sku, level)]
    new, events = _bump(level, evolve(level, reserved=level.reserved - hold.quantity), at)
    return new, evolve(hold, state=HoldState.RELEASED), [
        LineReleased(cmd.order_id, cmd.sku, hold.quantity),
        *events,
    ]


def commit(level: StockLevel, hold: Hold | None, cmd: CommitLine, at: str) -> Outcome:
    """Sell held units: they leave both on-hand and reserved. Without a live hold nothing
    is sold, and the answer says so (LineCommitted of the units sold: 0)."""
    if hold is not None and hold.state is HoldState.COMMITTED:
        return level, hold, [LineCommitted(cmd.order_id, cmd.sku, hold.quantity)]
    if hold is None or hold.state is not HoldState.HELD:
        return level, hold, [LineCommitted(cmd.order_id, cmd.sku, 0)]
    after = evolve(
        level, on_hand=level.on_hand - hold.quantity, reserved=level.reserved - hold.quantity
    )
    new, events = _bump(level, after, at)
    return new, evolve(hold, state=HoldState.COMMITTED), [
        LineCommitted(cmd.order_id, cmd.sku, hold.quantity),
        *events,
    ]


def apply(level: StockLevel, hold: Hold | None, cmd: ReserveLine | ReleaseLine | CommitLine, at: str) -> Outcome:
    """The rule for an order's command on one SKU: reserve, release or commit."""
    match cmd:
        case ReserveLine():
            return reserve(level, hold, cmd, at)
        case ReleaseLine():
            return release(level, hold, cmd, at)
        case CommitLine():
            return commit(level, hold, cmd, at)


def adjust(
    level: StockLevel, cmd: AdjustStock, at: str
) -> tuple[StockLevel, list[StockEvent]]:
    """Apply a stock adjustment unless it would make available stock negative."""
    if cmd.reason not in ADJUSTMENT_REASONS:
        return level, [AdjustmentRejected(cmd.sku, cmd.adjustment_id, f"unknown reason {cmd.reason!r}")]
    if level.available + cmd.delta < 0:
        return level, [
            AdjustmentRejected(
                cmd.sku,
                cmd.adjustment_id,
                f"would leave {level.available + cmd.delta} available "
                f"({level.on_hand} on hand, {level.reserved} reserved)",
            )
        ]
    threshold = (
        level.low_stock_threshold if cmd.low_stock_threshold is None else cmd.low_stock_threshold
    )
    after = evolve(level, on_hand=level.on_hand + cmd.delta, low_stock_threshold=threshold)
    new, events = _bump(level, after, at)
    applied = StockAdjusted(
        cmd.sku, cmd.adjustment_id, cmd.delta, cmd.reason, new.on_hand, new.reserved
    )
    # The adjustment comes after the level it made: both go to the SKU's partition of the
    # stock-levels topic, in order, so whoever sees the adjustment stored sees its level too.
    return new, [*events, applied]
