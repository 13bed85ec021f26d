"""The email agent: queues one email per (order, status) and per low-stock crossing, and
runs the sender that delivers them.

The agent only writes rows to the notifications table (idempotent by key) and acknowledges
events after that transaction; SMTP happens in the dispatcher, so a slow or failing mail
server never holds up the stream, and retries never hold up other orders' emails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random

import faust

from .. import records
from ..adapters.notification_store import Claimed
from ..app import app, dead_letters_topic, notification_inputs, runtime, settings
from ..domain import events as e
from ..domain import notifications as domain
from ..services.notifications import NotificationDispatcher
from .common import CORRELATION_HEADER, Outbox, handle_in_batches, header, now

log = logging.getLogger("orion.email")

_dispatcher: NotificationDispatcher | None = None


def dispatcher() -> NotificationDispatcher:
    """This worker's sender, made on first use (after the runtime is ready)."""
    global _dispatcher
    if _dispatcher is None:
        s = settings
        _dispatcher = NotificationDispatcher(
            runtime.notifications,
            runtime.renderer,
            runtime.mailer,
            sender=s.mail_from,
            policy=domain.RetryPolicy(s.email_max_attempts, s.email_retry_base, s.email_retry_max),
            dead_letter=dead_letter_email,
            # Retries come due between wake-ups; look at least twice per base delay.
            poll=max(0.1, min(1.0, s.email_retry_base / 2)),
            lease=max(60.0, 3 * s.smtp_timeout * 2),
        )
    return _dispatcher


def wake_sender() -> None:
    if _dispatcher is not None:
        _dispatcher.wake()


class Queued:
    """The emails one batch of events asks for, queued in one transaction by `written()`."""

    def __init__(self) -> None:
        self.items: list[domain.Notification] = []

    async def written(self) -> None:
        items, self.items = self.items, []
        if not items:
            return
        delay, attempt = 0.1, 0
        while True:
            attempt += 1
            try:
                added = await runtime.notifications.enqueue(items)
                break
            except Exception as exc:  # PostgreSQL away: never drop an email, never ack early
                log.warning("could not queue %d email(s) (attempt %d): %s", len(items), attempt, exc)
                await asyncio.sleep(delay * (0.5 + random.random()))  # backoff while the database is away
                delay = min(delay * 2, 5.0)
        if added:
            wake_sender()


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


@app.task
async def send_emails() -> None:
    """This worker's share of sending: claims due emails from PostgreSQL and sends them."""
    await runtime.ready()
    await dispatcher().run()


async def dead_letter_email(message: Claimed, reason: str) -> None:
    """An email that cannot be delivered: parked in dead-letters with why."""
    body = {
        "reason": reason,
        "source_topic": "notifications",
        "notification_id": message.id,
        "idempotency_key": message.key,
        "template": message.template,
        "recipients": list(message.recipients),
        "order_id": message.order_id,
        "sku": message.sku,
        "attempts": message.attempts,
        "at": now().iso,
    }
    headers = [("reason", reason.encode()[:1000]), ("source-topic", b"notifications")]
    if message.correlation_id:
        headers.append((CORRELATION_HEADER, message.correlation_id.encode()))
    key = (message.order_id or message.sku or message.id).encode()
    fut = await dead_letters_topic.send(key=key, value=json.dumps(body).encode(), headers=headers)
    await fut
