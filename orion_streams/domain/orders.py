"""Orders: validated lines, the status state machine and order requests from any source."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .catalog import Catalog
from .errors import UNKNOWN_SKU, FieldError, ValidationFailed

MAX_LINES = 50
MAX_QUANTITY = 1000
MAX_TOKEN_LENGTH = 200
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}")
_ALLOWED_ORDER_FIELDS = frozenset({"lines", "payment", "email"})
_ALLOWED_LINE_FIELDS = frozenset({"sku", "quantity"})
_ALLOWED_PAYMENT_FIELDS = frozenset({"token"})


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


def parse_order_request(body: object, catalog: Catalog) -> OrderRequest:
    """Validate an order body (HTTP or event) against the catalog.

    Raises ValidationFailed listing every problem; returns lines with duplicate SKUs merged.
    Fields the caller may not set (price, status, owner, totals) are refused, not ignored,
    so a client that believes it sets them learns otherwise.
    """
    errors: list[FieldError] = []
    if not isinstance(body, Mapping):
        raise ValidationFailed([FieldError("body", "must be a JSON object")])
    for key in sorted(set(body) - _ALLOWED_ORDER_FIELDS):
        errors.append(FieldError(str(key), "is not accepted; prices, status and owner are set by Orion"))

    merged: dict[str, int] = {}
    raw_lines = body.get("lines")
    if not isinstance(raw_lines, list) or not raw_lines:
        errors.append(FieldError("lines", "must be a non-empty list"))
        raw_lines = []
    elif len(raw_lines) > MAX_LINES:
        errors.append(FieldError("lines", f"at most {MAX_LINES} lines per order"))
        raw_lines = []
    for i, line in enumerate(raw_lines):
        errors.extend(_check_line(i, line, catalog, merged))
    for sku, qty in merged.items():
        if qty > MAX_QUANTITY:
            errors.append(
                FieldError("lines", f"{sku}: total quantity {qty} exceeds {MAX_QUANTITY}")
            )

    token = ""
    payment = body.get("payment")
    if not isinstance(payment, Mapping):
        errors.append(FieldError("payment", "must be an object with a token"))
    else:
        for key in sorted(set(payment) - _ALLOWED_PAYMENT_FIELDS):
            errors.append(FieldError(f"payment.{key}", "is not accepted"))
        raw_token = payment.get("token")
        if not isinstance(raw_token, str) or not raw_token.strip():
            errors.append(FieldError("payment.token", "is required"))
        elif len(raw_token) > MAX_TOKEN_LENGTH:
            errors.append(FieldError("payment.token", f"at most {MAX_TOKEN_LENGTH} characters"))
        else:
            token = raw_token

    email = body.get("email")
    if not isinstance(email, str) or len(email) > 254 or not _EMAIL.fullmatch(email):
        errors.append(FieldError("email", "must be a valid email address"))
        email = ""

    if errors:
        raise ValidationFailed(errors)
    lines = tuple(RequestedLine(sku, qty) for sku, qty in merged.items())
    return OrderRequest(lines=lines, payment_token=token, email=email)


def _check_line(
    i: int, line: Any, catalog: Catalog, merged: dict[str, int]
) -> list[FieldError]:
    where = f"lines[{i}]"
    if not isinstance(line, Mapping):
        return [FieldError(where, "must be an object with sku and quantity")]
    errors = [
        FieldError(f"{where}.{key}", "is not accepted; prices are set by Orion")
        for key in sorted(set(line) - _ALLOWED_LINE_FIELDS)
    ]
    sku, qty = line.get("sku"), line.get("quantity")
    if not isinstance(sku, str) or not sku:
        errors.append(FieldError(f"{where}.sku", "is required"))
    else:
        product = catalog.get(sku)
        if product is None:
            errors.append(FieldError(f"{where}.sku", f"unknown SKU {sku!r}", UNKNOWN_SKU))
        elif not product.active:
            errors.append(FieldError(f"{where}.sku", f"{sku} is not for sale"))
    if not isinstance(qty, int) or isinstance(qty, bool):
        errors.append(FieldError(f"{where}.quantity", "must be a whole number"))
    elif not 1 <= qty <= MAX_QUANTITY:
        errors.append(FieldError(f"{where}.quantity", f"must be between 1 and {MAX_QUANTITY}"))
    elif not errors and isinstance(sku, str):
        merged[sku] = merged.get(sku, 0) + qty
    return errors


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
