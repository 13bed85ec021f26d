"""Every Kafka topic Orion uses: name, key, what flows on it and its partition count.

Faust creates only its own internal topics; `ensure_topics` creates these before a worker
subscribes, so no producer's first send can create one with the wrong partition count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicSpec:
    """A source topic and what its key means."""

    name: str
    key: str
    carries: str
    compacted: bool = False


ORDERS = TopicSpec("orders", "order_id", "OrderPlaced | CancelOrder | FulfilOrder")
ORDER_EVENTS = TopicSpec(
    "order-events", "order_id", "LineReserved | LineRejected | LineReleased | Payment*"
)
STOCK_REQUESTS = TopicSpec(
    "stock-requests", "sku", "ReserveLine | ReleaseLine | CommitLine | AdjustStock"
)
PAYMENT_REQUESTS = TopicSpec("payment-requests", "order_id", "AuthorizePayment")
ORDER_STATUS = TopicSpec("order-status", "order_id", "OrderStatusChanged")
ORDER_AUDIT = TopicSpec("order-audit", "order_id", "AuditEntry")
STOCK_LEVELS = TopicSpec(
    "stock-levels", "sku", "StockLevelChanged | LowStockDetected | StockAdjusted | AdjustmentRejected"
)
DEAD_LETTERS = TopicSpec("dead-letters", "original key", "the raw value, reason in headers")

ALL: tuple[TopicSpec, ...] = (
    ORDERS,
    ORDER_EVENTS,
    STOCK_REQUESTS,
    PAYMENT_REQUESTS,
    ORDER_STATUS,
    ORDER_AUDIT,
    STOCK_LEVELS,
    DEAD_LETTERS,
)

