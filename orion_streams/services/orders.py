"""What the HTTP API lets people do to an order or to stock, besides placing an order:
cancel, fulfil, adjust stock. Each checks what it may do against the read model, then sends
its command into the pipeline, whose single writers decide. Nothing here knows HTTP:
refusals are typed (domain.errors: NotFound, Conflict, ValidationFailed) and the views turn
them into problems; who may ask is the views' business too."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Container, Mapping
from typing import Any, Protocol

from .. import topics as t
from ..domain import commands as c
from ..domain.errors import Conflict, FieldError, NotFound, ValidationFailed
from ..domain.orders import OrderStatus
from ..domain.stock import ADJUSTMENT_REASONS

# Sends a command to a topic (by name) under a key and returns once the broker has it.
Send = Callable[[str, str, Any], Awaitable[None]]
# Adjustment reasons people may give (the seed is Orion's own).
PEOPLE_REASONS = ("restock", "correction", "damage", "return")
assert set(PEOPLE_REASONS) == ADJUSTMENT_REASONS - {"seed"}
MAX_DELTA = 1_000_000


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
    if not isinstance(body, dict):
        raise ValidationFailed([FieldError("body", "must be a JSON object")])
    errors = []
    delta, reason, threshold = body.get("delta"), body.get("reason"), body.get("low_stock_threshold")
    if not isinstance(delta, int) or isinstance(delta, bool) or delta == 0 or abs(delta) > MAX_DELTA:
        errors.append(FieldError("delta", f"must be a non-zero whole number up to {MAX_DELTA}"))
    if reason not in PEOPLE_REASONS:
        errors.append(FieldError("reason", f"one of {', '.join(PEOPLE_REASONS)}"))
    if threshold is not None and (
        not isinstance(threshold, int) or isinstance(threshold, bool) or not 0 <= threshold <= MAX_DELTA
    ):
        errors.append(FieldError("low_stock_threshold", f"must be a whole number from 0 to {MAX_DELTA}"))
    errors.extend(FieldError(k, "is not accepted") for k in sorted(set(body) - {"delta", "reason", "low_stock_threshold"}))
    if errors:
        raise ValidationFailed(errors)
    assert isinstance(delta, int) and isinstance(reason, str)
    return delta, reason, threshold


async def adjust_stock(
    sku: str, body: Any, products: Container[str], reads: StockReads, send: Send, *,
    wait: float = 10.0, poll: float = 0.05,
) -> dict[str, Any]:
    """Change a SKU's stock by a delta with a reason, and wait (at most `wait` seconds) for its
    owner to apply it: {"adjustment_id", "status": "applied", "level"} or, still on its way,
    {"adjustment_id", "status": "pending"}. Conflict when it would leave less than nothing
    available (checked on the read model first, decided by the SKU's owner)."""
    if sku not in products:
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
