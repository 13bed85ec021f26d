"""The ports Orion's use cases depend on; adapters implement them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PaymentResult:
    """What a payment provider said: approved with an authorisation id, or why not."""

    approved: bool
    authorization_id: str = ""
    reason: str = ""


class PaymentError(Exception):
    """The provider could not be reached or answered nonsense; the call may be retried."""


class PaymentGateway(Protocol):
    """Authorises an amount against a payment token. Idempotent per idempotency key."""

    async def authorize(
        self, *, amount: int, currency: str, token: str, idempotency_key: str
    ) -> PaymentResult: ...
