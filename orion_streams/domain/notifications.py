"""Which email an event deserves, to whom, with what to say, and when to try again.

Pure: no templates, no SMTP, no database. The email agent turns events into
`Notification`s; the dispatcher sends them and asks `RetryPolicy` when to retry.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .events import LowStockDetected, OrderStatusChanged
from .money import format_amount
from .orders import OrderStatus
from .retry import ceiling

SHOP: Mapping[str, str] = {"name": "Orion Shop", "support_email": "support@orion.local"}

# One message per (order, status) for these statuses; RESERVED is internal and sends nothing.
TEMPLATE_FOR_STATUS: Mapping[OrderStatus, str] = {
    OrderStatus.PENDING: "order_received",
    OrderStatus.CONFIRMED: "order_processing",
    OrderStatus.FULFILLED: "order_fulfilled",
    OrderStatus.REJECTED: "order_failed",
    OrderStatus.PAYMENT_FAILED: "order_failed",
    OrderStatus.CANCELLED: "order_cancelled",
}
LOW_STOCK_TEMPLATE = "low_stock"
TEMPLATES = frozenset({*TEMPLATE_FOR_STATUS.values(), LOW_STOCK_TEMPLATE})

_NAMESPACE = uuid.UUID("0c5a3f57-6a43-4b8e-8f0e-5d1f1e2f3a4b")


@dataclass(frozen=True)
class Notification:
    """An email to send once. `key` is its idempotency key: the same event, however often
    delivered, yields the same key, and a key is sent at most once."""

    key: str
    template: str
    recipients: tuple[str, ...]
    context: Mapping[str, Any]
    order_id: str | None = None
    sku: str | None = None
    correlation_id: str | None = None
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", str(uuid.uuid5(_NAMESPACE, self.key)))


def order_key(order_id: str, status: OrderStatus) -> str:
    return f"order:{order_id}:{status.value}"


def low_stock_key(sku: str, version: int) -> str:
    return f"low-stock:{sku}:{version}"


def reason_in_words(status: OrderStatus, reason: str | None) -> str | None:
    """What a customer reads about a failure; the raw reason stays in the audit trail."""
    detail = (reason or "").strip()
    match status:
        case OrderStatus.REJECTED:
            if "out of stock" in detail:
                return f"Part of your order is no longer in stock ({detail}). Nothing was charged."
            return f"We could not accept your order ({detail or 'no reason given'}). Nothing was charged."
        case OrderStatus.PAYMENT_FAILED:
            if "timed out" in detail:
                return "Your payment provider did not answer in time, so the order was not placed. Nothing was charged."
            if detail.startswith("payment declined"):
                why = detail.removeprefix("payment declined").lstrip(": ")
                return f"Your payment was declined{f' ({why})' if why else ''}. Nothing was charged."
            return f"Your payment could not be taken ({detail or 'no reason given'}). Nothing was charged."
        case OrderStatus.CANCELLED:
            return f"The order was cancelled{f' ({detail})' if detail else ''}. Any reserved items were released."
        case _:
            return None


def for_status_change(
    event: OrderStatusChanged,
    product_name: Callable[[str], str | None],
    correlation_id: str | None = None,
) -> Notification | None:
    """The customer email for an order status change, or None when the status sends none."""
    template = TEMPLATE_FOR_STATUS.get(event.status)
    if template is None or not event.email:
        return None
    lines = [
        {
            "sku": line.sku,
            "name": product_name(line.sku) or line.sku,
            "quantity": line.quantity,
            "unit_price": format_amount(line.unit_price, event.currency),
            "line_total": format_amount(line.line_total, event.currency),
        }
        for line in event.lines
    ]
    context = {
        "shop": dict(SHOP),
        "order": {
            "order_id": event.order_id,
            "short_id": event.order_id[:8],
            "status": event.status.value,
            "customer_email": event.email,
            "user_id": event.user_id,
            "lines": lines,
            "total": format_amount(event.total, event.currency),
            "currency": event.currency,
            "created_at": event.created_at,
            "at": event.at,
        },
        "reason": reason_in_words(event.status, event.failure_reason),
    }
    return Notification(
        key=order_key(event.order_id, event.status),
        template=template,
        recipients=(event.email,),
        context=context,
        order_id=event.order_id,
        correlation_id=correlation_id,
    )


def for_low_stock(
    event: LowStockDetected, product_name: str | None, admins: tuple[str, ...]
) -> Notification | None:
    """The admins' alert for a SKU whose available stock crossed its threshold."""
    if not admins:
        return None
    context = {
        "shop": dict(SHOP),
        "stock": {
            "sku": event.sku,
            "name": product_name or event.sku,
            "available": event.available,
            "threshold": event.low_stock_threshold,
            "at": event.at,
        },
    }
    return Notification(
        key=low_stock_key(event.sku, event.version),
        template=LOW_STOCK_TEMPLATE,
        recipients=admins,
        context=context,
        sku=event.sku,
    )


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits about base * 2^(n-1), capped."""

    max_attempts: int = 6
    base: float = 2.0
    cap: float = 300.0

    def delay(self, attempts: int, jitter: float) -> float:
        """Seconds to wait after `attempts` failed tries; `jitter` in [0, 1) spreads retries
        of many messages over the upper half of the interval."""
        return ceiling(attempts, self.base, self.cap) * (0.5 + 0.5 * jitter)

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts
