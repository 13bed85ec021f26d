"""Email queueing: one email per (order, status) and per low-stock crossing.

It runs in the projection agent's loop (agents/projection.py), which reads the same topics:
each record is decoded once and a batch's emails are queued in its projection's transaction.
It only writes rows to the notifications table (idempotent by key, with a NOTIFY), and the
events are acknowledged after that transaction. Sending is the mailer's job (`orion mailer`,
see mailer.py), a separate process: rendering and SMTP never take CPU from the pipeline, a
slow or failing mail server never holds up the stream, and mailers scale on their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import faust

from .. import logs, tracing
from ..domain import events as e
from ..domain import notifications as domain
from .common import CORRELATION_HEADER, header

if TYPE_CHECKING:
    from ..config import Settings
    from ..domain.catalog import Catalog

log = logging.getLogger("orion.email")


class Emails:
    """The emails one batch of events asks for; the projection queues them in the
    transaction that writes the batch (agents/projection.py)."""

    def __init__(self, settings: Settings, catalog: Callable[[], Catalog]) -> None:
        self.settings, self.catalog = settings, catalog
        self.items: list[domain.Notification] = []

    def take(self) -> list[domain.Notification]:
        items, self.items = self.items, []
        return items

    @staticmethod
    def logged(items: list[domain.Notification], added: set[str]) -> None:
        for note in items:
            if note.id in added and logs.per_order.allow():
                with logs.bound(correlation_id=note.correlation_id, order_id=note.order_id, sku=note.sku,
                                notification_id=note.id):
                    log.info("email %s queued", note.template)

    def _name(self, sku: str) -> str | None:
        product = self.catalog().get(sku)
        return product.name if product is not None else None

    def collect(self, event: faust.EventT[bytes], message: Any) -> None:
        """The email a decoded order-status or stock-levels record asks for, if any."""
        match message:
            case e.OrderStatusChanged():
                note = domain.for_status_change(message, self._name, header(event, CORRELATION_HEADER))
            case e.LowStockDetected():
                note = domain.for_low_stock(message, self._name(message.sku), self.settings.alert_emails)
            case _:
                note = None
        if note is not None:
            if tracing.enabled():
                with tracing.span("email agent", attributes={"orion.email.template": note.template}):
                    self.items.append(note)
            else:
                self.items.append(note)
