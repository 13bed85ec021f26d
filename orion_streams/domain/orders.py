"""Orders: validated lines, the status state machine and the catalog's checks of order requests
from any source."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from .catalog import Catalog
from .errors import UNKNOWN_SKU, FieldError, ValidationFailed

MAX_LINES = 50
MAX_QUANTITY = 1000
MAX_TOKEN_LENGTH = 200


class OrderStatus(StrEnum):
    """Where an order stands; the last four are failures and terminal."""

    PENDING = "PENDING"
    RESERVED = "RESERVED"
    CONFIRMED = "CONFIRMED"
    FULFILLED = "FULFILLED"
    REJECTED = "REJECTED"
    PAYMENT_FAILED = "PAYMENT_FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def is_failure(self) -> bool:
        return self in FAILURES

    @property
    def is_decided(self) -> bool:
        """Decided in API.md's sense: stock is settled (RESERVED or later, or failed)."""
        return self is not OrderStatus.PENDING

    @property
    def is_settled(self) -> bool:
        """Nothing more happens without a person: confirmed, fulfilled or failed."""
        return self not in (OrderStatus.PENDING, OrderStatus.RESERVED)


FAILURES = frozenset({OrderStatus.REJECTED, OrderStatus.PAYMENT_FAILED, OrderStatus.CANCELLED})
TERMINAL = FAILURES | {OrderStatus.FULFILLED}

TRANSITIONS: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset(
        {OrderStatus.RESERVED, OrderStatus.REJECTED, OrderStatus.CANCELLED}
    ),
    OrderStatus.RESERVED: frozenset(
        {OrderStatus.CONFIRMED, OrderStatus.PAYMENT_FAILED, OrderStatus.CANCELLED}
    ),
    OrderStatus.CONFIRMED: frozenset({OrderStatus.FULFILLED, OrderStatus.CANCELLED}),
    OrderStatus.FULFILLED: frozenset(),
    OrderStatus.REJECTED: frozenset(),
    OrderStatus.PAYMENT_FAILED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
}


def can_transition(current: OrderStatus, target: OrderStatus) -> bool:
    return target in TRANSITIONS[current]


@dataclass(frozen=True)
class RequestedLine:
    """A line as asked for: a SKU and how many."""

    sku: str
    quantity: int


@dataclass(frozen=True)
class OrderRequest:
    """A validated order request: merged lines, a payment token and a contact address."""

    lines: tuple[RequestedLine, ...]
    payment_token: str
    email: str


def check_order(
    lines: Sequence[tuple[str | None, int | None]], payment_token: str, email: str,
    catalog: Catalog, errors: Sequence[FieldError] = (),
) -> OrderRequest:
    """An order request (HTTP or event) checked against the catalog, its lines merged by SKU.

    `lines` are (sku, quantity) as asked for, already well-formed (`schemas.OrderRequest`
    checks the shape of a request from any source), with None for a part refused there;
    `errors` are the problems found there. Each SKU must be known and for sale, and its
    merged quantity at most MAX_QUANTITY. Raises ValidationFailed listing every problem.
    """
    found = list(errors)
    merged: dict[str, int] = {}
    for i, (sku, qty) in enumerate(lines):
        if sku is None:
            continue
        product = catalog.get(sku)
        if product is None:
            found.append(FieldError(f"lines[{i}].sku", f"unknown SKU {sku!r}", UNKNOWN_SKU))
        elif not product.active:
            found.append(FieldError(f"lines[{i}].sku", f"{sku} is not for sale"))
        elif qty is not None:
            merged[sku] = merged.get(sku, 0) + qty
    for sku, qty in merged.items():
        if qty > MAX_QUANTITY:
            found.append(FieldError("lines", f"{sku}: total quantity {qty} exceeds {MAX_QUANTITY}"))
    if found:
        raise ValidationFailed(found)
    requested = tuple(RequestedLine(sku, qty) for sku, qty in merged.items())
    return OrderRequest(lines=requested, payment_token=payment_token, email=email)


def priced_lines(
    lines: Sequence[RequestedLine], catalog: Catalog
) -> tuple[tuple[str, int, int], ...]:
    """(sku, quantity, unit_price) per line, prices from the catalog, never the caller."""
    out = []
    for line in lines:
        product = catalog.get(line.sku)
        if product is None:
            raise ValidationFailed([FieldError("lines", f"unknown SKU {line.sku!r}", UNKNOWN_SKU)])
        out.append((line.sku, line.quantity, product.unit_price))
    return tuple(out)


def order_currency(lines: Sequence[RequestedLine], catalog: Catalog) -> str:
    currencies = {p.currency for line in lines if (p := catalog.get(line.sku)) is not None}
    if len(currencies) != 1:
        raise ValidationFailed([FieldError("lines", "all lines must share one currency")])
    return currencies.pop()
