"""The payment agent: authorises and voids through the PaymentGateway port and reports back
to the saga. Many requests wait on the provider at once; acknowledgements go in offset
order, so a commit never passes a request that has not been answered."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from .. import logs, records, tracing
from ..app import app, order_events_topic, payment_requests_topic, runtime, settings
from ..domain import commands as c
from ..domain import events as e
from ..services import payments
from ..services.grouped import Grouped
from .common import (
    CORRELATION_HEADER,
    OrderedAcks,
    Outbox,
    Send,
    dead_letter,
    header,
    identity,
    unpack,
)

log = logging.getLogger("orion.payment")


async def _send_answers(answers: list[Send]) -> None:
    outbox = Outbox()
    for topic, key, message, headers in answers:
        outbox.send(topic, key, message, headers)
    await outbox.flush()


# Answers finished at about the same time go out together, one batch record per partition.
answers = Grouped(_send_answers)


@app.agent(payment_requests_topic, concurrency=1)
async def take_payment(stream: faust.StreamT[bytes]) -> None:
    await runtime.ready()
    manual = stream.noack()  # type: ignore[attr-defined]
    acks = OrderedAcks(manual)
    slots = asyncio.Semaphore(settings.payment_concurrency)
    running: set[asyncio.Task[None]] = set()

    async def one(request: Any, record: faust.EventT[bytes], left: list[int]) -> None:
        try:
            await handle_event(request)
        except Exception:
            # A bug must not wedge the partition forever; the message is parked with why.
            log.exception("payment agent failed on %s", request.message.tp)
            await dead_letter(request, "internal error in the payment agent", kind="internal_error")
        finally:
            slots.release()
        left[0] -= 1
        if not left[0]:  # the record's last request is answered
            await acks.done(record)

    try:
        async for event in manual.events():
            acks.started(event)
            try:
                requests = unpack(event)
            except records.BadRecord as exc:
                await dead_letter(event, str(exc), kind="bad_record")
                requests = []
            if not requests:
                await acks.done(event)
                continue
            left = [len(requests)]
            for request in requests:
                await slots.acquire()
                task = asyncio.ensure_future(one(request, event, left))
                running.add(task)
                task.add_done_callback(running.discard)
    finally:
        for task in running:
            task.cancel()


async def handle_event(event: Any) -> None:
    """One payment request: a single record or an item of a batch record."""
    try:
        command = records.decode(event.value)
    except records.BadRecord as exc:
        await dead_letter(event, str(exc), kind="bad_record")
        return
    if not isinstance(command, c.AuthorizePayment | c.VoidPayment):
        await dead_letter(event, f"{type(command).__name__} does not belong on payment-requests", kind="wrong_topic")
        return
    with (
        logs.bound(correlation_id=header(event, CORRELATION_HEADER), order_id=command.order_id),
        tracing.span("payment", "client", attributes={"orion.payment.gateway": settings.payment_gateway}),
    ):
        outcome: payments.AuthorizeOutcome | payments.VoidResult
        if isinstance(command, c.AuthorizePayment):
            outcome = await payments.authorize(runtime.payments, command, settings.payment_timeout)
        else:
            outcome = await payments.void(runtime.payments, command, settings.payment_void_timeout)
        match outcome:
            case e.PaymentAuthorized():
                logs.order_info(log, "payment authorised (%s)", outcome.authorization_id)
            case e.PaymentDeclined():
                logs.order_info(log, "payment declined: %s", outcome.reason)
            case e.PaymentTimedOut():
                log.warning("no definite payment answer: %s", outcome.reason)
            case e.PaymentVoided():
                logs.order_info(log, "payment of %s: %s", command.order_id, outcome.outcome)
            case e.PaymentVoidFailed():
                log.error("payment void failed: %s", outcome.reason)
                await dead_letter(event, outcome.reason, kind="void_failed")
    await answers.submit((order_events_topic, command.order_id, outcome, identity(event)))
