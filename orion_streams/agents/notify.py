"""The email agent: queues one email per (order, status) and per low-stock crossing.

The agent only writes rows to the notifications table (idempotent by key, with a NOTIFY)
and acknowledges events after that transaction. Sending is the mailer's job (`orion mailer`,
see mailer.py), a separate process: rendering and SMTP never take CPU from the pipeline, a
slow or failing mail server never holds up the stream, and mailers scale on their own.
"""

from __future__ import annotations

import logging

import faust

from .. import logs, records, tracing
from ..app import app, notification_inputs, runtime, settings
from ..domain import events as e
from ..domain import notifications as domain
from .common import CORRELATION_HEADER, Outbox, handle_in_batches, header, until_done

log = logging.getLogger("orion.email")


class Queued:
    """The emails one batch of events asks for, queued in one transaction by `written()`."""

    def __init__(self) -> None:
        self.items: list[domain.Notification] = []

    async def written(self) -> None:
        items, self.items = self.items, []
        if not items:
            return
        with tracing.span("email queue write", links=[n.correlation_id for n in items], attributes={"orion.batch.emails": len(items)}):
            added = set(await until_done(lambda: runtime.notifications.enqueue(items), f"queueing {len(items)} email(s)"))
        for note in items:
            with logs.bound(correlation_id=note.correlation_id, order_id=note.order_id, sku=note.sku,
                            notification_id=note.id):
                if note.id in added:
                    log.info("email %s queued", note.template)
                else:
                    log.debug("email %s was queued before", note.template)


batch = Queued()


def _name(sku: str) -> str | None:
    product = runtime.catalog.get(sku)
    return product.name if product is not None else None


async def handle_event(event: faust.EventT[bytes], outbox: Outbox) -> None:
    try:
        message = records.decode(event.value)
    except records.BadRecord:
        return  # the projection reads the same topics and dead-letters bad records once
    match message:
        case e.OrderStatusChanged():
            note = domain.for_status_change(message, _name, header(event, CORRELATION_HEADER))
        case e.LowStockDetected():
            note = domain.for_low_stock(message, _name(message.sku), settings.alert_emails)
        case _:
            note = None
    if note is not None:
        batch.items.append(note)


@app.agent(notification_inputs, concurrency=1)
async def queue_emails(stream: faust.StreamT[bytes]) -> None:
    """Order status changes and low-stock crossings -> rows in the notifications table."""
    await runtime.ready()
    await handle_in_batches(stream, handle_event, batch, what="email agent")
