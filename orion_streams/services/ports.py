"""The ports Orion's use cases depend on; adapters implement them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Accepted:
    """An order the HTTP API accepted, as first recorded (status PENDING, version 0)."""

    order_id: str
    user_id: str
    email: str
    lines: tuple[tuple[str, int, int], ...]  # sku, quantity, unit price
    currency: str
    created_at: datetime
    idempotency_key: str | None
    request_hash: str


@dataclass(frozen=True)
class PaymentResult:
    """What a payment provider said: approved with an authorisation id, or why not."""

    approved: bool
    authorization_id: str = ""
    reason: str = ""


class VoidOutcome(StrEnum):
    """What a provider did when asked to void."""

    VOIDED = "voided"
    CAPTURED = "captured"  # the money was taken already: refund it instead
    NOTHING = "nothing"  # it holds no authorisation for that payment


class PaymentError(Exception):
    """The provider could not be reached or answered nonsense; the call may be retried."""


class PaymentPending(PaymentError):
    """The provider is still working on an earlier request with the same key; ask again."""


class PaymentGateway(Protocol):
    """Authorises, voids and refunds. Every call is idempotent: `payment_key` (the order
    id) is the authorisation's idempotency key and names it when its id is unknown."""

    async def authorize(
        self, *, amount: int, currency: str, token: str, idempotency_key: str
    ) -> PaymentResult: ...

    async def void(self, *, authorization_id: str | None, payment_key: str) -> VoidOutcome: ...

    async def refund(
        self, *, authorization_id: str | None, payment_key: str, amount: int, currency: str
    ) -> None: ...
