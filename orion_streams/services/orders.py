"""What the HTTP API lets people do: place an order, cancel or fulfil it, adjust stock. Each
checks what it may do (the catalog, the read model), then sends its event or command into
the pipeline, whose single writers decide. Nothing here knows HTTP: refusals are typed
(domain.errors: NotFound, Conflict, ValidationFailed; Busy) and the views turn them into
problems; who may ask, and how often, is the views' business."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from .. import logs, records
from .. import topics as t
from ..domain import commands as c
from ..domain import events as e
from ..domain.catalog import Catalog
from ..domain.errors import (
    UNKNOWN_SKU,
    Conflict,
    DomainError,
    FieldError,
    NotFound,
    Unprocessable,
    ValidationFailed,
)
from ..domain.money import format_amount
from ..domain.orders import (
    OrderRequest,
    OrderStatus,
    order_currency,
    priced_lines,
)
from ..schemas import MAX_IDEMPOTENCY_KEY, AdjustmentRequest, parse, parse_order_request
from .admission import Refusal
from .ports import Accepted

log = logging.getLogger("orion.orders")
# Ids of orders placed with an Idempotency-Key derive from the caller and the key.
_NAMESPACE = uuid.UUID("5b8f6f2e-7d8c-4f61-9a43-0c8d3c1f2a10")

# Sends a command to a topic (by name) under a key and returns once the broker has it.
Send = Callable[[str, str, Any], Awaitable[None]]


class Busy(DomainError):
    """Admission control is not taking new orders now: nothing was written or sent."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.detail)
        self.refusal = refusal


class CatalogSource(Protocol):
    """The products on sale, and a fresher look at them for a product added since."""

    @property
    def catalog(self) -> Catalog: ...

    async def refresh_catalog_if_stale(self) -> bool: ...


# The order an Idempotency-Key was first used for, by caller and key (the read model).
FindByKey = Callable[[str, str], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True, slots=True)
class Placement:
    """A placed order: its id, and what was accepted (None for a retry with the same
    Idempotency-Key: the order placed the first time, nothing sent again)."""

    order_id: str
    accepted: Accepted | None


async def place(
    body: Any, subject: str, key: str | None, refusal: Refusal | None, products: CatalogSource,
    find: FindByKey, send: Send,
) -> Placement:
    """Check an order against the catalog, price it and send it to the pipeline as
    OrderPlaced (once the broker has it, it is accepted). A retry with an Idempotency-Key
    used before gets the order placed then, never refused; a new order is refused (Busy) when
    admission control says so. ValidationFailed names every bad field."""
    order = await _checked(body, products)
    lines = priced_lines(order.lines, products.catalog)
    currency = order_currency(order.lines, products.catalog)
    if key is not None and (not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not records.storable(key)):
        raise ValidationFailed([FieldError("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} characters of UTF-8")])
    digest = _request_hash(order)
    if key:
        existing = await find(subject, key)
        if existing is not None:
            if existing["request_hash"] not in (None, digest):
                raise Unprocessable("this Idempotency-Key was used with a different request")
            return Placement(existing["order_id"], None)  # a retry is never refused
    if refusal is not None:
        raise Busy(refusal)
    if key:
        order_id = str(uuid.uuid5(_NAMESPACE, f"{subject}\x1f{key}"))
        event_id = str(uuid.uuid5(_NAMESPACE, f"event\x1f{order_id}"))
    else:
        order_id, event_id = str(uuid.uuid4()), str(uuid.uuid4())
    now = datetime.now(UTC)
    placed = e.OrderPlaced(
        event_id=event_id, order_id=order_id, user_id=subject, email=order.email, lines=order.lines,
        payment_token=order.payment_token, placed_at=records.utc_iso(now, "milliseconds"),
    )
    logs.bind(order_id=order_id)  # the HTTP middleware unbinds when the request ends
    await send(t.ORDERS.name, order_id, placed)
    logs.order_info(
        log, "order accepted: %d line(s), %s, by %s", len(lines),
        format_amount(sum(q * price for _, q, price in lines), currency), subject,
    )
    return Placement(order_id, Accepted(order_id, subject, order.email, tuple(lines), currency, now, key, digest))


async def _checked(body: Any, products: CatalogSource) -> OrderRequest:
    """The order request checked against the catalog; a SKU it does not know may be a
    product added since it was loaded: look again (at most once a second) before refusing."""
    try:
        return parse_order_request(body, products.catalog)
    except ValidationFailed as exc:
        if not exc.has(UNKNOWN_SKU):
            raise
    await products.refresh_catalog_if_stale()
    return parse_order_request(body, products.catalog)


def _request_hash(request: OrderRequest) -> str:
    """What an Idempotency-Key promises stays the same: lines, payment token and email."""
    canonical = json.dumps(
        {"lines": [[line.sku, line.quantity] for line in request.lines],
         "token": request.payment_token, "email": request.email},
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class StockReads(Protocol):
    """The read model's answers an adjustment needs."""

    async def get_stock(self, sku: str) -> dict[str, Any] | None: ...

    async def adjustment(self, adjustment_id: str) -> dict[str, Any] | None: ...


async def cancel(order: Mapping[str, Any], send: Send) -> str:
    """Ask the saga to cancel `order` (as the read model has it); returns what the caller is
    told: CANCELLING, or CANCELLED for an order cancelled already (nothing is sent again)."""
    status = OrderStatus(order["status"])
    if status is OrderStatus.FULFILLED:
        raise Conflict("a fulfilled order cannot be cancelled")
    if status in (OrderStatus.REJECTED, OrderStatus.PAYMENT_FAILED):
        raise Conflict(f"the order already ended as {status}")
    if status is OrderStatus.CANCELLED:
        return "CANCELLED"
    order_id = order["order_id"]
    await send(t.ORDERS.name, order_id, c.CancelOrder(order_id, str(uuid.uuid4()), "cancelled on request"))
    return "CANCELLING"


async def fulfil(order: Mapping[str, Any], send: Send) -> None:
    """Ask the saga to fulfil a CONFIRMED order (one fulfilled already: nothing to send)."""
    status = OrderStatus(order["status"])
    if status not in (OrderStatus.CONFIRMED, OrderStatus.FULFILLED):
        raise Conflict(f"only a CONFIRMED order can be fulfilled; this one is {status}")
    if status is OrderStatus.CONFIRMED:
        await send(t.ORDERS.name, order["order_id"], c.FulfilOrder(order["order_id"], str(uuid.uuid4())))


def adjustment_request(body: Any) -> tuple[int, str, int | None]:
    """(delta, reason, low-stock threshold) of an adjustment request; ValidationFailed with
    every problem otherwise."""
    request = parse(AdjustmentRequest, body)
    return request.delta, request.reason, request.low_stock_threshold


async def adjust_stock(
    sku: str, body: Any, products: CatalogSource, reads: StockReads, send: Send, *,
    wait: float = 10.0, poll: float = 0.05,
) -> dict[str, Any]:
    """Change a SKU's stock by a delta with a reason, and wait (at most `wait` seconds) for its
    owner to apply it: {"adjustment_id", "status": "applied", "level"} or, still on its way,
    {"adjustment_id", "status": "pending"}. Conflict when it would leave less than nothing
    available (checked on the read model first, decided by the SKU's owner). A SKU the catalog
    does not know may be a product added since it was loaded: look again (at most once a
    second) before refusing."""
    if sku not in products.catalog:
        await products.refresh_catalog_if_stale()
    if sku not in products.catalog:
        raise NotFound(f"no product {sku}")
    delta, reason, threshold = adjustment_request(body)
    level = await reads.get_stock(sku)
    if level is not None and level["available"] + delta < 0:
        raise Conflict(f"would leave {level['available'] + delta} available")
    adjustment_id = str(uuid.uuid4())
    await send(t.STOCK_REQUESTS.name, sku, c.AdjustStock(sku, adjustment_id, delta, reason, threshold))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        result = await reads.adjustment(adjustment_id)
        if result is not None:
            if result["status"] == "rejected":
                raise Conflict(result["detail"] or "adjustment refused")
            return {"adjustment_id": adjustment_id, "status": "applied", "level": await reads.get_stock(sku)}
        await asyncio.sleep(poll)  # poll the read model until the owner's answer is there
    return {"adjustment_id": adjustment_id, "status": "pending"}
