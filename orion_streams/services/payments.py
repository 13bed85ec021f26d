"""Taking and giving back payments through the PaymentGateway port, within time budgets.

The budget starts when the payment agent takes the request, never when the saga sent it,
so time spent in Kafka queues cannot fail a payment. Within it the adapter retries with
the same idempotency key; past it the outcome is unknown, and the saga fails the order and
voids whatever the key may have authorised.
"""

from __future__ import annotations

import asyncio

from ..domain import commands as c
from ..domain import events as e
from ..domain.retry import Backoff
from .ports import PaymentError, PaymentGateway, VoidOutcome

AuthorizeOutcome = e.PaymentAuthorized | e.PaymentDeclined | e.PaymentTimedOut
VoidResult = e.PaymentVoided | e.PaymentVoidFailed


async def authorize(gateway: PaymentGateway, command: c.AuthorizePayment, budget: float) -> AuthorizeOutcome:
    """One authorisation, bounded by `budget` seconds, retries included."""
    try:
        async with asyncio.timeout(budget):
            result = await gateway.authorize(
                amount=command.amount, currency=command.currency, token=command.token,
                idempotency_key=command.order_id,
            )
    except TimeoutError:
        return e.PaymentTimedOut(command.order_id, f"payment timed out: the provider did not answer within {budget:g}s")
    except PaymentError as exc:
        return e.PaymentTimedOut(command.order_id, f"payment provider unavailable: {exc}")
    if result.approved:
        return e.PaymentAuthorized(command.order_id, result.authorization_id)
    return e.PaymentDeclined(command.order_id, result.reason)


async def void(
    gateway: PaymentGateway, command: c.VoidPayment, budget: float, *, first_retry: float = 0.2
) -> VoidResult:
    """Void an authorisation, or refund it if it was captured, retrying with backoff while
    the provider is away or still busy with the authorisation, for at most `budget`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    backoff, last = Backoff(first_retry, budget / 4), "no attempt made"
    while True:
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                outcome = await gateway.void(authorization_id=command.authorization_id, payment_key=command.order_id)
                if outcome is VoidOutcome.CAPTURED:
                    await gateway.refund(
                        authorization_id=command.authorization_id, payment_key=command.order_id,
                        amount=command.amount, currency=command.currency,
                    )
                    return e.PaymentVoided(command.order_id, command.authorization_id, "refunded")
            return e.PaymentVoided(command.order_id, command.authorization_id, outcome.value)
        except TimeoutError:
            last = f"no answer within {budget:g}s"
        except PaymentError as exc:
            last = str(exc) or type(exc).__name__
        pause = backoff.next()
        if loop.time() + pause >= deadline:
            return e.PaymentVoidFailed(command.order_id, f"the provider did not void within {budget:g}s: {last}")
        await asyncio.sleep(pause)  # backoff while the provider is away or busy
