"""Events: facts that happened, named in the past tense."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .orders import OrderStatus, RequestedLine


@dataclass(frozen=True)
class OrderPlaced:
    """A customer (or a producer on its behalf) asked for an order."""

    event_id: str
    order_id: str
    user_id: str
    email: str
    lines: tuple[RequestedLine, ...]
    payment_token: str
    placed_at: str


@dataclass(frozen=True)
class LineReserved:
    """Units of a SKU are held for an order."""

    order_id: str
    sku: str
    quantity: int


@dataclass(frozen=True)
class LineRejected:
    """A SKU could not supply an order's line."""

    order_id: str
    sku: str
    quantity: int
    available: int
    reason: str


@dataclass(frozen=True)
class LineReleased:
    """An order's hold on a SKU went back to available stock."""

    order_id: str
    sku: str
    quantity: int


@dataclass(frozen=True)
class LineCommitted:
    """An order's held units of a SKU were sold and left stock."""

    order_id: str
    sku: str
    quantity: int


@dataclass(frozen=True)
class PaymentAuthorized:
    """The provider authorised the order's total."""

    order_id: str
    authorization_id: str


@dataclass(frozen=True)
class PaymentDeclined:
    """The provider refused the payment."""

    order_id: str
    reason: str


@dataclass(frozen=True)
class PaymentTimedOut:
    """The provider gave no definite answer within the payment budget: it may or may not
    have authorised, so whatever it did is voided."""

    order_id: str
    reason: str = "payment timed out"


@dataclass(frozen=True)
class PaymentVoided:
    """What became of a void: `voided`, `refunded` (it had been captured) or `nothing`
    (the provider holds no authorisation for the order)."""

    order_id: str
    authorization_id: str | None
    outcome: str


@dataclass(frozen=True)
class PaymentVoidFailed:
    """The provider could not be made to void within the retry budget; the command is
    parked on dead-letters for an operator."""

    order_id: str
    reason: str


@dataclass(frozen=True)
class OrderLineView:
    """A priced line as shown to readers of an order."""

    sku: str
    quantity: int
    unit_price: int

    @property
    def line_total(self) -> int:
        return self.unit_price * self.quantity


@dataclass(frozen=True)
class OrderStatusChanged:
    """An order moved to a new status; carries the order as it now stands."""

    order_id: str
    user_id: str
    email: str
    status: OrderStatus
    previous: OrderStatus | None
    lines: tuple[OrderLineView, ...]
    total: int
    currency: str
    failure_reason: str | None
    version: int
    created_at: str
    at: str
    # The audit entries of the step that made this change (its own included): they reach the
    # audit trail with it, in one record instead of one each (see agents/saga.py).
    audit: tuple[AuditEntry, ...] = ()


@dataclass(frozen=True)
class AuditEntry:
    """One line of an order's audit trail; `seq` orders them within the order."""

    order_id: str
    seq: int
    kind: str
    at: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StockLevelChanged:
    """A SKU's stock as it now stands; `version` grows with every change."""

    sku: str
    on_hand: int
    reserved: int
    low_stock_threshold: int
    version: int
    at: str

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    @property
    def low_stock(self) -> bool:
        return self.available <= self.low_stock_threshold


@dataclass(frozen=True)
class LowStockDetected:
    """A SKU's available stock fell to or below its threshold (once per crossing)."""

    sku: str
    available: int
    low_stock_threshold: int
    at: str
    # The stock version at the crossing: one alert per crossing, however often it is delivered.
    version: int = 0


@dataclass(frozen=True)
class StockAdjusted:
    """An adjustment was applied to a SKU's units on hand."""

    sku: str
    adjustment_id: str
    delta: int
    reason: str
    on_hand: int
    reserved: int


@dataclass(frozen=True)
class AdjustmentRejected:
    """An adjustment was refused; stock is unchanged."""

    sku: str
    adjustment_id: str
    reason: str


ReservationReply = LineReserved | LineRejected | LineReleased | LineCommitted
PaymentReply = PaymentAuthorized | PaymentDeclined | PaymentTimedOut | PaymentVoided | PaymentVoidFailed
