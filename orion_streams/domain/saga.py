"""The order saga: reserve every line, take payment, compensate on any failure.

`start` turns an OrderPlaced into a saga; `handle` applies one later message. Both return
the new saga and what must be sent (commands to other owners, status changes, audit
entries). Redelivered messages return the saga unchanged and nothing to send.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from .catalog import Catalog
from .commands import (
    AuthorizePayment,
    CancelOrder,
    CommitLine,
    FulfilOrder,
    ReleaseLine,
    ReserveLine,
)
from .errors import FieldError, ValidationFailed
from .events import (
    AuditEntry,
    LineCommitted,
    LineRejected,
    LineReleased,
    LineReserved,
    OrderLineView,
    OrderPlaced,
    OrderStatusChanged,
    PaymentAuthorized,
    PaymentDeclined,
    PaymentTimedOut,
)
from .orders import (
    FAILURES,
    MAX_LINES,
    MAX_QUANTITY,
    OrderStatus,
    can_transition,
    order_currency,
)


class LineState(StrEnum):
    """Where one line of an order stands with its SKU's owner."""

    PENDING = "pending"
    RESERVED = "reserved"
    REJECTED = "rejected"
    RELEASED = "released"
    COMMITTED = "committed"


@dataclass(frozen=True)
class SagaLine:
    """One SKU of an order, its price at placement and its reservation state."""

    sku: str
    quantity: int
    unit_price: int
    state: LineState = LineState.PENDING
    settled: bool = False  # the SKU owner confirmed the release or sale


@dataclass(frozen=True)
class OrderSaga:
    """Everything the saga needs to decide an order; bounded by the order's size."""

    order_id: str
    user_id: str
    email: str
    status: OrderStatus
    lines: tuple[SagaLine, ...]
    currency: str
    payment_token: str
    created_at: str
    updated_at: str
    seq: int = 0
    failure_reason: str | None = None
    payment_deadline: float | None = None

    @property
    def total(self) -> int:
        return sum(line.quantity * line.unit_price for line in self.lines)

    def line(self, sku: str) -> SagaLine | None:
        return next((line for line in self.lines if line.sku == sku), None)


SagaInput = (
    LineReserved
    | LineRejected
    | LineReleased
    | LineCommitted
    | PaymentAuthorized
    | PaymentDeclined
    | PaymentTimedOut
    | CancelOrder
    | FulfilOrder
)
SagaOutput = (
    ReserveLine | ReleaseLine | CommitLine | AuthorizePayment | OrderStatusChanged | AuditEntry
)
Step = tuple[OrderSaga, list[SagaOutput]]


@dataclass(frozen=True)
class Clock:
    """The saga's notion of now: an RFC 3339 string and epoch seconds."""

    iso: str
    epoch: float


def start(placed: OrderPlaced, catalog: Catalog, now: Clock) -> Step:
    """Open the saga for a new order: price it from the catalog, ask for every line."""
    _check_placed(placed, catalog)
    currency = order_currency(placed.lines, catalog)
    lines = []
    for requested in placed.lines:
        product = catalog.get(requested.sku)
        assert product is not None  # checked above
        lines.append(SagaLine(requested.sku, requested.quantity, product.unit_price))
    saga = OrderSaga(
        order_id=placed.order_id,
        user_id=placed.user_id,
        email=placed.email,
        status=OrderStatus.PENDING,
        lines=tuple(lines),
        currency=currency,
        payment_token=placed.payment_token,
        created_at=placed.placed_at or now.iso,
        updated_at=now.iso,
    )
    out: list[SagaOutput] = []
    saga = _audit(saga, out, "OrderPlaced", now, _placed_data(saga))
    out.append(_status_event(saga, None, now))
    out.extend(ReserveLine(saga.order_id, line.sku, line.quantity) for line in saga.lines)
    return saga, out


def handle(saga: OrderSaga, msg: SagaInput, now: Clock, payment_timeout: float) -> Step:
    """Apply one message to an existing saga."""
    match msg:
        case LineReserved():
            return _on_reserved(saga, msg, now, payment_timeout)
        case LineRejected():
            return _on_rejected(saga, msg, now)
        case LineReleased() | LineCommitted():
            # Confirmations from the SKU owner: recorded once for the audit trail.
            line = saga.line(msg.sku)
            if line is None or line.settled:
                return saga, []
            out: list[SagaOutput] = []
            lines = tuple(replace(x, settled=True) if x.sku == msg.sku else x for x in saga.lines)
            saga = replace(saga, lines=lines)
            kind = type(msg).__name__
            return _audit(saga, out, kind, now, {"sku": msg.sku, "quantity": msg.quantity}), out
        case PaymentAuthorized():
            return _on_payment_authorized(saga, msg, now)
        case PaymentDeclined():
            return _on_payment_failed(saga, "PaymentDeclined", f"payment declined: {msg.reason}", now)
        case PaymentTimedOut():
            return _on_payment_failed(saga, "PaymentTimedOut", "payment timed out", now)
        case CancelOrder():
            return _on_cancel(saga, msg, now)
        case FulfilOrder():
            return _on_fulfil(saga, now)
    raise TypeError(f"the saga does not take {type(msg).__name__}")


def payment_overdue(saga: OrderSaga, now_epoch: float) -> bool:
    """True when the saga waits for a payment answer past its deadline."""
    return (
        saga.status is OrderStatus.RESERVED
        and saga.payment_deadline is not None
        and now_epoch >= saga.payment_deadline
    )


def _check_placed(placed: OrderPlaced, catalog: Catalog) -> None:
    errors = []
    if not placed.order_id or not placed.user_id:
        errors.append(FieldError("order_id", "order_id and user_id are required"))
    if not 1 <= len(placed.lines) <= MAX_LINES:
        errors.append(FieldError("lines", f"an order has 1 to {MAX_LINES} lines"))
    if len({line.sku for line in placed.lines}) != len(placed.lines):
        errors.append(FieldError("lines", "duplicate SKUs"))
    for line in placed.lines:
        product = catalog.get(line.sku)
        if product is None or not product.active:
            errors.append(FieldError("lines", f"unknown SKU {line.sku!r}"))
        if not 1 <= line.quantity <= MAX_QUANTITY:
            errors.append(FieldError("lines", f"{line.sku}: quantity must be 1 to {MAX_QUANTITY}"))
    if not placed.payment_token:
        errors.append(FieldError("payment.token", "is required"))
    if errors:
        raise ValidationFailed(errors)


def _on_reserved(saga: OrderSaga, msg: LineReserved, now: Clock, timeout: float) -> Step:
    line = saga.line(msg.sku)
    if line is None or line.state is not LineState.PENDING:
        return saga, []
    out: list[SagaOutput] = []
    if saga.status is not OrderStatus.PENDING:
        # The order failed while this line was in flight: give the units straight back.
        saga = _set_line(saga, msg.sku, LineState.RELEASED)
        saga = _audit(saga, out, "LineReserved", now, {"sku": msg.sku, "quantity": msg.quantity})
        out.append(ReleaseLine(saga.order_id, msg.sku))
        return saga, out
    saga = _set_line(saga, msg.sku, LineState.RESERVED)
    saga = _audit(saga, out, "LineReserved", now, {"sku": msg.sku, "quantity": msg.quantity})
    if all(line.state is LineState.RESERVED for line in saga.lines):
        saga = replace(saga, payment_deadline=now.epoch + timeout)
        saga = _move(saga, out, OrderStatus.RESERVED, now)
        out.append(AuthorizePayment(saga.order_id, saga.total, saga.currency, saga.payment_token))
    return saga, out


def _on_rejected(saga: OrderSaga, msg: LineRejected, now: Clock) -> Step:
    line = saga.line(msg.sku)
    if line is None or line.state is not LineState.PENDING:
        return saga, []
    out: list[SagaOutput] = []
    saga = _set_line(saga, msg.sku, LineState.REJECTED)
    saga = _audit(
        saga, out, "LineRejected", now,
        {"sku": msg.sku, "quantity": msg.quantity, "available": msg.available, "reason": msg.reason},
    )
    if saga.status is OrderStatus.PENDING:
        saga = _fail(saga, out, OrderStatus.REJECTED, msg.reason, now)
    return saga, out


def _on_payment_authorized(saga: OrderSaga, msg: PaymentAuthorized, now: Clock) -> Step:
    if saga.status is not OrderStatus.RESERVED:
        return saga, []
    out: list[SagaOutput] = []
    saga = _audit(saga, out, "PaymentAuthorized", now, {"authorization_id": msg.authorization_id})
    saga = replace(saga, payment_deadline=None)
    return _move(saga, out, OrderStatus.CONFIRMED, now), out


def _on_payment_failed(saga: OrderSaga, kind: str, reason: str, now: Clock) -> Step:
    if saga.status is not OrderStatus.RESERVED:
        return saga, []
    out: list[SagaOutput] = []
    saga = _audit(saga, out, kind, now, {"reason": reason})
    return _fail(saga, out, OrderStatus.PAYMENT_FAILED, reason, now), out


def _on_cancel(saga: OrderSaga, msg: CancelOrder, now: Clock) -> Step:
    if not can_transition(saga.status, OrderStatus.CANCELLED):
        return saga, []
    out: list[SagaOutput] = []
    saga = _audit(saga, out, "CancelOrder", now, {"reason": msg.reason, "event_id": msg.event_id})
    return _fail(saga, out, OrderStatus.CANCELLED, msg.reason, now), out


def _on_fulfil(saga: OrderSaga, now: Clock) -> Step:
    if saga.status is not OrderStatus.CONFIRMED:
        return saga, []
    out: list[SagaOutput] = []
    saga = _audit(saga, out, "FulfilOrder", now, {})
    for line in saga.lines:
        out.append(CommitLine(saga.order_id, line.sku))
    saga = replace(saga, lines=tuple(replace(line, state=LineState.COMMITTED) for line in saga.lines))
    return _move(saga, out, OrderStatus.FULFILLED, now), out


def _fail(
    saga: OrderSaga, out: list[SagaOutput], status: OrderStatus, reason: str, now: Clock
) -> OrderSaga:
    """Move to a failure state and release every line that holds stock."""
    assert status in FAILURES
    released = []
    for line in saga.lines:
        if line.state is LineState.RESERVED:
            out.append(ReleaseLine(saga.order_id, line.sku))
            released.append(replace(line, state=LineState.RELEASED))
        else:
            released.append(line)
    saga = replace(saga, lines=tuple(released), failure_reason=reason, payment_deadline=None)
    return _move(saga, out, status, now)


def _move(saga: OrderSaga, out: list[SagaOutput], status: OrderStatus, now: Clock) -> OrderSaga:
    previous = saga.status
    saga = replace(saga, status=status, updated_at=now.iso)
    saga = _audit(saga, out, "OrderStatusChanged", now, {"from": previous, "to": status, "reason": saga.failure_reason})
    out.append(_status_event(saga, previous, now))
    return saga


def _audit(
    saga: OrderSaga, out: list[SagaOutput], kind: str, now: Clock, data: dict[str, Any]
) -> OrderSaga:
    saga = replace(saga, seq=saga.seq + 1, updated_at=now.iso)
    out.append(AuditEntry(saga.order_id, saga.seq, kind, now.iso, data))
    return saga


def _set_line(saga: OrderSaga, sku: str, state: LineState) -> OrderSaga:
    lines = tuple(replace(line, state=state) if line.sku == sku else line for line in saga.lines)
    return replace(saga, lines=lines)


def _status_event(saga: OrderSaga, previous: OrderStatus | None, now: Clock) -> OrderStatusChanged:
    return OrderStatusChanged(
        order_id=saga.order_id,
        user_id=saga.user_id,
        email=saga.email,
        status=saga.status,
        previous=previous,
        lines=_line_views(saga.lines),
        total=saga.total,
        currency=saga.currency,
        failure_reason=saga.failure_reason,
        version=saga.seq,
        created_at=saga.created_at,
        at=now.iso,
    )


def _line_views(lines: Sequence[SagaLine]) -> tuple[OrderLineView, ...]:
    return tuple(OrderLineView(line.sku, line.quantity, line.unit_price) for line in lines)


def _placed_data(saga: OrderSaga) -> dict[str, Any]:
    return {
        "lines": [{"sku": line.sku, "quantity": line.quantity, "unit_price": line.unit_price} for line in saga.lines],
        "total": saga.total,
        "currency": saga.currency,
        "email": saga.email,
    }


