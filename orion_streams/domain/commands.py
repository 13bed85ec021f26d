"""Commands: requests for something to happen, named in the imperative."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReserveLine:
    """Hold `quantity` units of `sku` for an order, or say why not."""

    order_id: str
    sku: str
    quantity: int


@dataclass(frozen=True)
class ReleaseLine:
    """Give back whatever an order holds of a SKU (nothing if it holds nothing)."""

    order_id: str
    sku: str


@dataclass(frozen=True)
class CommitLine:
    """Turn an order's hold on a SKU into a sale: the units leave stock."""

    order_id: str
    sku: str


@dataclass(frozen=True)
class AdjustStock:
    """Change a SKU's units on hand (restock, correction, damage, return)."""

    sku: str
    adjustment_id: str
    delta: int
    reason: str
    low_stock_threshold: int | None = None


@dataclass(frozen=True)
class AuthorizePayment:
    """Ask the payment provider to authorise an order's total."""

    order_id: str
    amount: int
    currency: str
    token: str


@dataclass(frozen=True)
class VoidPayment:
    """Give back whatever the provider authorised for an order: void the authorisation, or
    refund it if it was captured. `authorization_id` is None when the outcome of the
    authorisation is unknown (it timed out): the provider voids by the order's payment key."""

    order_id: str
    authorization_id: str | None
    amount: int
    currency: str


@dataclass(frozen=True)
class CancelOrder:
    """Cancel an order that is not yet fulfilled, releasing its stock."""

    order_id: str
    event_id: str
    reason: str = "cancelled on request"


@dataclass(frozen=True)
class FulfilOrder:
    """Mark a confirmed order as shipped; its held units become sold."""

    order_id: str
    event_id: str


StockCommand = ReserveLine | ReleaseLine | CommitLine | AdjustStock
PaymentCommand = AuthorizePayment | VoidPayment
