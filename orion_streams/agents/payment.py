"""The payment agent: asks the PaymentGateway port and reports back to the saga."""

from __future__ import annotations

import asyncio
import logging

import faust

from .. import logs, records, tracing
from ..app import app, order_events_topic, payment_requests_topic, runtime, settings
from ..domain import commands as c
from ..domain import events as e
from ..services.ports import PaymentError
from .common import CORRELATION_HEADER, dead_letter, header, identity, send_all

log = logging.getLogger("orion.payment")


async def authorize(command: c.AuthorizePayment) -> e.PaymentAuthorized | e.PaymentDeclined | e.PaymentTimedOut:
    """One authorisation, bounded by the payment timeout. The order id is the idempotency
    key, so a redelivered request can never charge twice at a real provider."""
    try:
        result = await asyncio.wait_for(
            runtime.payments.authorize(
                amount=command.amount, currency=command.currency, token=command.token,
                idempotency_key=command.order_id,
            ),
            timeout=settings.payment_timeout,
        )
    except TimeoutError:
        return e.PaymentTimedOut(command.order_id)
    except PaymentError as exc:
        return e.PaymentDeclined(command.order_id, f"payment provider unavailable: {exc}")
    if result.approved:
        return e.PaymentAuthorized(command.order_id, result.authorization_id)
    return e.PaymentDeclined(command.order_id, result.reason)


# No table is written here, so several requests may wait on the provider at once. If a
# commit skips past an unfinished request (faust-streaming issue 606) and the worker dies,
# the saga's own payment deadline still fails the order and releases its stock.
@app.agent(payment_requests_topic, concurrency=8)
async def take_payment(stream: faust.StreamT[bytes]) -> None:
    await runtime.ready()
    async for event in stream.events():
        try:
            command = records.decode(event.value)
        except records.BadRecord as exc:
            await dead_letter(event, str(exc), kind="bad_record")
            continue
        if not isinstance(command, c.AuthorizePayment):
            await dead_letter(event, f"{type(command).__name__} does not belong on payment-requests", kind="wrong_topic")
            continue
        with (
            logs.bound(correlation_id=header(event, CORRELATION_HEADER), order_id=command.order_id),
            tracing.span("payment", "client", attributes={"orion.payment.gateway": settings.payment_gateway}),
        ):
            outcome = await authorize(command)
            match outcome:
                case e.PaymentAuthorized():
                    log.info("payment authorised (%s)", outcome.authorization_id)
                case e.PaymentDeclined():
                    log.info("payment declined: %s", outcome.reason)
                case e.PaymentTimedOut():
                    log.warning("payment provider did not answer within %.1fs", settings.payment_timeout)
        headers = identity(event)
        await send_all([(order_events_topic, command.order_id, outcome, headers)])
