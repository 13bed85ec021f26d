"""The order saga: reserve every line, take payment, compensate on any failure.

`start` turns an OrderPlaced into a saga; `handle` applies one later message. Both return
the new saga and what must be sent (commands to other owners, status changes, audit
entries). Redelivered messages return the saga unchanged and nothing to send.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    VoidPayment,
)
from .errors import UNKNOWN_SKU, FieldError, ValidationFailed
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
    PaymentVoided,
    PaymentVoidFailed,
)
from .orders import (
    FAILURES,
    MAX_LINES,
    MAX_QUANTITY,
    OrderStatus,
    can_transition,
    order_currency,
)
from .values import evolve


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


class VoidState(StrEnum):
    """Where giving back an order's payment stands, once the saga asked for it."""

    REQUESTED = "requested"
    VOIDED = "voided"
    REFUNDED = "refunded"
    NOTHING = "nothing"  # the provider held no authorisation for the order
    FAILED = "failed"  # retries ran out; the command waits on dead-letters for an operator


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
    # An AuthorizePayment went out and no answer has come back yet.
    paying: bool = False
    # Why the payment failed, when it failed while lines were still being reserved (payment
    # asked alongside the reservations): the order fails once every line has an answer.
    payment_failed: str | None = None
    authorization_id: str | None = None
    void: VoidState | None = None
    # The authorisation the void asks for; None: whatever the order's payment key authorised.
    void_for: str | None = None

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
    | PaymentVoided
    | PaymentVoidFailed
    | CancelOrder
    | FulfilOrder
)
Request = ReserveLine | ReleaseLine | CommitLine | AuthorizePayment | VoidPayment
SagaOutput = Request | OrderStatusChanged | AuditEntry
Step = tuple[OrderSaga, list[SagaOutput]]


@dataclass(frozen=True)
class Clock:
    """The saga's notion of now: an RFC 3339 string and epoch seconds."""

    iso: str
    epoch: float


def start(placed: OrderPlaced, catalog: Catalog, now: Clock, *, pay_now: bool = False) -> Step:
    """Open the saga for a new order: price it from the catalog, ask for every line.

    `pay_now` asks for the payment alongside the reservations instead of once every line
    is held: the order is decided two hops sooner, and an authorisation for an order that
    then fails for stock is voided like any other."""
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
        paying=pay_now,
    )
    out: list[SagaOutput] = []
    saga = _audit(saga, out, "OrderPlaced", now, _placed_data(saga))
    out.append(_status_event(saga, None, now))
    out.extend(ReserveLine(saga.order_id, line.sku, line.quantity) for line in saga.lines)
    if pay_now:
        out.append(_authorize(saga))
    return saga, out


def handle(saga: OrderSaga, msg: SagaInput, now: Clock) -> Step:
    """Apply one message to an existing saga.

    The saga keeps no clock of its own: the payment agent bounds the provider call and
    always answers, and a request whose answer was lost is asked again on evidence of the
    loss (see `outstanding`), so time spent waiting in queues can never fail an order.
    """
    match msg:
        case LineReserved():
            return _on_reserved(saga, msg, now)
        case LineRejected():
            return _on_rejected(saga, msg, now)
        case LineReleased() | LineCommitted():
            return _on_settled(saga, msg, now)
        case PaymentAuthorized():
            return _on_payment_authorized(saga, msg, now)
        case PaymentDeclined():
            return _on_payment_failed(saga, "PaymentDeclined", f"payment declined: {msg.reason}", now)
        case PaymentTimedOut():
            return _on_payment_unknown(saga, msg, now)
        case PaymentVoided():
            return _on_voided(saga, msg, now)
        case PaymentVoidFailed():
            if saga.void is not VoidState.REQUESTED:
                return saga, []
            out: list[SagaOutput] = []
            saga = _audit(evolve(saga, void=VoidState.FAILED), out, "PaymentVoidFailed", now, {"reason": msg.reason})
            return saga, out
        case CancelOrder():
            return _on_cancel(saga, msg, now)
        case FulfilOrder():
            return _on_fulfil(saga, now)
    raise TypeError(f"the saga does not take {type(msg).__name__}")


def outstanding(saga: OrderSaga) -> list[Request]:
    """The requests this saga sent and still waits to hear about. Each is safe to send
    again: its receiver answers a repeat from what it recorded the first time."""
    out: list[Request] = []
    for line in saga.lines:
        if line.state is LineState.PENDING:
            # Even for a failed order: a late reservation must be heard of to be given back.
            out.append(ReserveLine(saga.order_id, line.sku, line.quantity))
        elif line.state is LineState.RELEASED and not line.settled:
            out.append(ReleaseLine(saga.order_id, line.sku))
        elif line.state is LineState.COMMITTED and not line.settled:
            out.append(CommitLine(saga.order_id, line.sku))
    if saga.paying:
        out.append(_authorize(saga))
    if saga.void is VoidState.REQUESTED:
        out.append(_void(saga))
    return out


def retirable(saga: OrderSaga) -> bool:
    """Nothing more can happen to the order and nothing it asked for is unanswered: its
    state may be forgotten (after a retention that absorbs redelivered messages)."""
    return saga.status.is_terminal and not outstanding(saga)


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
            errors.append(FieldError("lines", f"unknown SKU {line.sku!r}", UNKNOWN_SKU))
        if not 1 <= line.quantity <= MAX_QUANTITY:
            errors.append(FieldError("lines", f"{line.sku}: quantity must be 1 to {MAX_QUANTITY}"))
    if not placed.payment_token:
        errors.append(FieldError("payment.token", "is required"))
    if errors:
        raise ValidationFailed(errors)


def _on_reserved(saga: OrderSaga, msg: LineReserved, now: Clock) -> Step:
    line = saga.line(msg.sku)
    if line is None or line.state in (LineState.RESERVED, LineState.COMMITTED):
        return saga, []  # a repeated answer: the units are already counted
    if line.state is LineState.RELEASED and not line.settled:
        return saga, []  # a repeat of the answer the release now in flight gives back
    if line.state is LineState.RELEASED:
        # Given back and settled: a replayed answer (or a hold a stray repeat made after the
        # old one was retired). Release whatever may be held; record nothing new, so a
        # replay leaves the order and its audit trail as they were.
        return saga, [ReleaseLine(saga.order_id, msg.sku)]
    out: list[SagaOutput] = []
    if line.state is not LineState.PENDING or saga.status is not OrderStatus.PENDING:
        # Units are held that this order will not use (it failed while the line was in
        # flight, or a stray repeat made a new hold): give them straight back.
        saga = _set_line(saga, msg.sku, LineState.RELEASED)
        data = {"sku": msg.sku, "quantity": msg.quantity, **({} if line.state is LineState.PENDING else {"late": True})}
        saga = _audit(saga, out, "LineReserved", now, data)
        out.append(ReleaseLine(saga.order_id, msg.sku))
        return saga, out
    saga = _set_line(saga, msg.sku, LineState.RESERVED)
    saga = _audit(saga, out, "LineReserved", now, {"sku": msg.sku, "quantity": msg.quantity})
    if not all(line.state is LineState.RESERVED for line in saga.lines):
        return saga, out
    saga = _move(saga, out, OrderStatus.RESERVED, now)
    if saga.payment_failed is not None:  # the payment asked alongside failed meanwhile
        return _fail(saga, out, OrderStatus.PAYMENT_FAILED, saga.payment_failed, now), out
    if saga.authorization_id is not None:  # paid while the lines were being held
        return _move(saga, out, OrderStatus.CONFIRMED, now), out
    if not saga.paying:
        saga = evolve(saga, paying=True)
        out.append(_authorize(saga))
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


def _on_settled(saga: OrderSaga, msg: LineReleased | LineCommitted, now: Clock) -> Step:
    """The SKU owner says a line's units went back or were sold: recorded once."""
    line = saga.line(msg.sku)
    if line is None or line.settled or line.state is LineState.RESERVED:
        return saga, []
    out: list[SagaOutput] = []
    kind = type(msg).__name__
    if line.state is LineState.PENDING:
        # The owner holds nothing for this line and never will (its hold was closed
        # before the reservation was asked): the line cannot be supplied.
        saga = evolve(saga, lines=_with(saga.lines, msg.sku, state=LineState.REJECTED, settled=True))
        saga = _audit(saga, out, kind, now, {"sku": msg.sku, "quantity": msg.quantity})
        if saga.status is OrderStatus.PENDING:
            saga = _fail(saga, out, OrderStatus.REJECTED, f"{msg.sku}: no stock could be held", now)
        return saga, out
    saga = evolve(saga, lines=_with(saga.lines, msg.sku, settled=True))
    return _audit(saga, out, kind, now, {"sku": msg.sku, "quantity": msg.quantity}), out


def _on_payment_authorized(saga: OrderSaga, msg: PaymentAuthorized, now: Clock) -> Step:
    if msg.authorization_id == saga.authorization_id:
        return saga, []  # a repeated answer
    out: list[SagaOutput] = []
    if saga.paying and saga.status in (OrderStatus.PENDING, OrderStatus.RESERVED):
        saga = evolve(saga, paying=False, authorization_id=msg.authorization_id)
        saga = _audit(saga, out, "PaymentAuthorized", now, {"authorization_id": msg.authorization_id})
        if saga.status is OrderStatus.RESERVED:
            saga = _move(saga, out, OrderStatus.CONFIRMED, now)
        return saga, out  # PENDING: confirmed once every line is held
    if not (saga.status.is_failure or saga.payment_failed is not None):
        return saga, []
    # The order failed, was cancelled or gave up on its payment before the money was
    # authorised: give it back.
    saga = evolve(saga, paying=False, authorization_id=msg.authorization_id)
    saga = _audit(saga, out, "PaymentAuthorized", now, {"authorization_id": msg.authorization_id, "late": True})
    if saga.void in (None, VoidState.NOTHING, VoidState.FAILED):
        saga = _request_void(saga, out, "authorised after the order ended", now)
    return saga, out


def _on_payment_failed(saga: OrderSaga, kind: str, reason: str, now: Clock) -> Step:
    if not saga.paying:
        return saga, []
    out: list[SagaOutput] = []
    saga = _audit(evolve(saga, paying=False), out, kind, now, {"reason": reason})
    if saga.status is OrderStatus.RESERVED:
        saga = _fail(saga, out, OrderStatus.PAYMENT_FAILED, reason, now)
    elif saga.status is OrderStatus.PENDING:
        # Asked alongside the reservations: the order fails once every line is answered
        # (a rejected line makes it REJECTED; otherwise PAYMENT_FAILED, the holds released).
        saga = evolve(saga, payment_failed=reason)
    return saga, out


def _on_payment_unknown(saga: OrderSaga, msg: PaymentTimedOut, now: Clock) -> Step:
    """No definite answer: the provider may have authorised. Fail the order if it still
    waited for the money, and void whatever the payment key authorised."""
    if not saga.paying:
        return saga, []
    saga, out = _on_payment_failed(saga, "PaymentTimedOut", msg.reason, now)
    if saga.void is None:
        saga = _request_void(saga, out, "the authorisation's outcome is unknown", now)
    return saga, out


def _on_voided(saga: OrderSaga, msg: PaymentVoided, now: Clock) -> Step:
    if saga.void not in (VoidState.REQUESTED, VoidState.FAILED) or msg.authorization_id != saga.void_for:
        return saga, []  # not the answer to the void asked for (a repeat of an earlier one)
    out: list[SagaOutput] = []
    try:
        outcome = VoidState(msg.outcome)
    except ValueError:
        outcome = VoidState.VOIDED
    kind = "PaymentRefunded" if outcome is VoidState.REFUNDED else "PaymentVoided"
    saga = evolve(saga, void=outcome)
    saga = _audit(saga, out, kind, now, {"authorization_id": msg.authorization_id, "outcome": msg.outcome})
    if outcome is VoidState.NOTHING and saga.authorization_id and saga.void_for != saga.authorization_id:
        # Voided by payment key before the late authorisation existed: void that one too.
        saga = _request_void(saga, out, "authorised after the order ended", now)
    return saga, out


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
    saga = evolve(saga, lines=tuple(evolve(line, state=LineState.COMMITTED) for line in saga.lines))
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
            released.append(evolve(line, state=LineState.RELEASED))
        else:
            released.append(line)
    saga = evolve(saga, lines=tuple(released), failure_reason=reason)
    saga = _move(saga, out, status, now)
    if saga.authorization_id is not None and saga.void is None:
        # Paid for an order that did not go through (cancelled once confirmed, or failed
        # for stock after the payment asked alongside the reservations): give it back.
        saga = _request_void(saga, out, _VOID_REASONS[status], now)
    return saga


_VOID_REASONS = {
    OrderStatus.CANCELLED: "order cancelled",
    OrderStatus.REJECTED: "order rejected",
    OrderStatus.PAYMENT_FAILED: "order failed",
}


def _authorize(saga: OrderSaga) -> AuthorizePayment:
    return AuthorizePayment(saga.order_id, saga.total, saga.currency, saga.payment_token)


def _void(saga: OrderSaga) -> VoidPayment:
    return VoidPayment(saga.order_id, saga.void_for, saga.total, saga.currency)


def _request_void(saga: OrderSaga, out: list[SagaOutput], reason: str, now: Clock) -> OrderSaga:
    saga = evolve(saga, void=VoidState.REQUESTED, void_for=saga.authorization_id)
    saga = _audit(saga, out, "PaymentVoidRequested", now, {"authorization_id": saga.authorization_id, "reason": reason})
    out.append(_void(saga))
    return saga


def _move(saga: OrderSaga, out: list[SagaOutput], status: OrderStatus, now: Clock) -> OrderSaga:
    previous = saga.status
    saga = evolve(saga, status=status, updated_at=now.iso)
    saga = _audit(saga, out, "OrderStatusChanged", now, {"from": previous, "to": status, "reason": saga.failure_reason})
    out.append(_status_event(saga, previous, now))
    return saga


def _audit(
    saga: OrderSaga, out: list[SagaOutput], kind: str, now: Clock, data: dict[str, Any]
) -> OrderSaga:
    saga = evolve(saga, seq=saga.seq + 1, updated_at=now.iso)
    out.append(AuditEntry(saga.order_id, saga.seq, kind, now.iso, data))
    return saga


def _set_line(saga: OrderSaga, sku: str, state: LineState) -> OrderSaga:
    return evolve(saga, lines=_with(saga.lines, sku, state=state, settled=False))


def _with(lines: tuple[SagaLine, ...], sku: str, **changes: Any) -> tuple[SagaLine, ...]:
    return tuple(evolve(line, **changes) if line.sku == sku else line for line in lines)


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


