"""The payment agent: authorises and voids through the PaymentGateway port and reports back
to the saga. Many requests wait on the provider at once; acknowledgements go in offset
order, so a commit never passes a request that has not been answered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import faust

from .. import logs, records, tracing
from .. import topics as t
from ..domain import commands as c
from ..domain import events as e
from ..services import payments
from ..services.grouped import Grouped
from .common import (
    CORRELATION_HEADER,
    Bus,
    OrderedAcks,
    Outbox,
    Send,
    header,
    identity,
    unpack,
)

if TYPE_CHECKING:
    from ..app import Orion
    from ..config import Settings
    from ..services.ports import PaymentGateway

log = logging.getLogger("orion.payment")


class PaymentAgent:
    """Payment requests, one at a time or many waiting on the provider at once: each is
    answered on order-events; answers finished at about the same time go out together,
    one batch record per partition."""

    def __init__(self, settings: Settings, gateway: Callable[[], PaymentGateway], bus: Bus) -> None:
        self.settings, self.gateway, self.bus = settings, gateway, bus
        self.answers: Grouped[Send] = Grouped(self._send_answers)

    async def _send_answers(self, answers: list[Send]) -> None:
        outbox = Outbox(self.bus)
        for topic, key, message, headers in answers:
            outbox.send(topic, key, message, headers)
        await outbox.flush()

    async def run(self, stream: faust.StreamT[bytes]) -> None:
        """The agent's loop: up to `payment_concurrency` requests at once, acknowledged in
        offset order, so a commit never passes a request that has not been answered."""
        manual = stream.noack()  # type: ignore[attr-defined]
        acks = OrderedAcks(manual)
        slots = asyncio.Semaphore(self.settings.payment_concurrency)
        running: set[asyncio.Task[None]] = set()

        async def one(request: Any, record: faust.EventT[bytes], left: list[int]) -> None:
            try:
                await self.handle_event(request)
            except Exception:
                # A bug must not wedge the partition forever; the message is parked with why.
                log.exception("payment agent failed on %s", request.message.tp)
                await self.bus.dead_letter(request, "internal error in the payment agent", kind="internal_error")
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
                    await self.bus.dead_letter(event, str(exc), kind="bad_record")
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

    async def handle_event(self, event: Any) -> None:
        """One payment request: a single record or an item of a batch record."""
        try:
            command = records.decode(event.value)
        except records.BadRecord as exc:
            await self.bus.dead_letter(event, str(exc), kind="bad_record")
            return
        if not isinstance(command, c.AuthorizePayment | c.VoidPayment):
            await self.bus.dead_letter(
                event, f"{type(command).__name__} does not belong on payment-requests", kind="wrong_topic")
            return
        settings = self.settings
        with (
            logs.bound(correlation_id=header(event, CORRELATION_HEADER), order_id=command.order_id),
            tracing.span("payment", "client", attributes={"orion.payment.gateway": settings.payment_gateway}),
        ):
            outcome: payments.AuthorizeOutcome | payments.VoidResult
            if isinstance(command, c.AuthorizePayment):
                outcome = await payments.authorize(self.gateway(), command, settings.payment_timeout)
            else:
                outcome = await payments.void(self.gateway(), command, settings.payment_void_timeout)
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
                    await self.bus.dead_letter(event, outcome.reason, kind="void_failed")
        await self.answers.submit((t.ORDER_EVENTS.name, command.order_id, outcome, identity(event)))


def register(orion: Orion) -> PaymentAgent:
    """The payment agent, on `payment-requests`."""
    runtime = orion.runtime
    agent = PaymentAgent(orion.settings, lambda: runtime.payments, orion.bus)

    async def take_payment(stream: faust.StreamT[bytes]) -> None:
        await runtime.ready()
        await agent.run(stream)

    orion.app.agent(
        orion.source(t.PAYMENT_REQUESTS.name), name="orion_streams.agents.payment.take_payment", concurrency=1,
    )(take_payment)
    return agent
