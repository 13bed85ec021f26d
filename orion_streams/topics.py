"""Every Kafka topic Orion uses: name, key, what flows on it and its partition count.

Faust creates only its own internal topics; `ensure_topics` creates these before a worker
subscribes, so no producer's first send can create one with the wrong partition count.
Every topic has `ORION_PARTITIONS` partitions except those whose spec fixes a count
(`worker-status`, one partition).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicSpec:
    """A source topic and what its key means; `partitions` None: `ORION_PARTITIONS`.
    `config`: topic settings `ensure_topics` creates it with."""

    name: str
    key: str
    carries: str
    compacted: bool = False
    partitions: int | None = None
    config: tuple[tuple[str, str], ...] = ()


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
# Each worker's heartbeat, once a second (agents/heartbeat.py), read by every worker's live feed
# for the ops console; a tombstone when a worker stops. Compacted: only the latest per worker
# matters, and small segments let old heartbeats go soon.
WORKER_STATUS = TopicSpec(
    "worker-status", "worker id", "WorkerStatus (a tombstone when the worker stops)", compacted=True,
    partitions=1,
    config=(
        ("cleanup.policy", "compact,delete"),
        ("retention.ms", str(60 * 60 * 1000)),
        ("segment.ms", str(10 * 60 * 1000)),
        ("delete.retention.ms", str(60 * 1000)),
        ("min.cleanable.dirty.ratio", "0.5"),
    ),
)

ALL: tuple[TopicSpec, ...] = (
    ORDERS,
    ORDER_EVENTS,
    STOCK_REQUESTS,
    PAYMENT_REQUESTS,
    ORDER_STATUS,
    ORDER_AUDIT,
    STOCK_LEVELS,
    DEAD_LETTERS,
    WORKER_STATUS,
)

# The topics of the pipeline itself, `ORION_PARTITIONS` each (not `worker-status`, which
# only the live feeds read).
PIPELINE: tuple[TopicSpec, ...] = tuple(spec for spec in ALL if spec.partitions is None)

