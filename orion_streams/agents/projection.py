"""The projection agent: writes order states, the audit trail and stock levels to PostgreSQL,
then queues the emails they ask for (agents/notify.py), one batch at a time."""

from __future__ import annotations

import logging

import faust

from .. import logs, records, tracing
from ..adapters.postgres import AuditContext
from ..app import app, projection_inputs, runtime
from ..domain import events as e
from . import notify
from .common import (
    ACTOR_HEADER,
    CORRELATION_HEADER,
    ROLES_HEADER,
    Outbox,
    dead_letter,
    handle_in_batches,
    header,
    until_done,
)

log = logging.getLogger("orion.projection")


class Projection:
    """One batch of events bound for PostgreSQL. `written()` makes it one transaction, so
    the batch loop acknowledges the events only once they are in the database."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.statuses: list[e.OrderStatusChanged] = []
        self.audit: list[tuple[e.AuditEntry, AuditContext]] = []
        self.levels: list[e.StockLevelChanged] = []
        self.adjustments: list[e.StockAdjusted | e.AdjustmentRejected] = []
        self.correlation_ids: list[str | None] = []  # of each status change, for the log

    async def written(self) -> None:
        if self.statuses or self.audit or self.levels or self.adjustments:
            with tracing.span(
                "projection write", links=[*self.correlation_ids, *(ctx.correlation_id for _, ctx in self.audit)],
                attributes={"orion.batch.statuses": len(self.statuses), "orion.batch.audit": len(self.audit)},
            ):
                await until_done(
                    lambda: runtime.store.project(self.statuses, self.audit, self.levels, self.adjustments),
                    "projection write",
                )
            for change, cid in zip(self.statuses, self.correlation_ids, strict=True):
                if logs.per_order.allow():
                    with logs.bound(correlation_id=cid, order_id=change.order_id):
                        log.info("stored order status %s (version %d)", change.status.value, change.version)
        self._reset()


batch = Projection()


async def handle_event(event: faust.EventT[bytes], outbox: Outbox) -> None:
    try:
        message = records.decode(event.value)
    except records.BadRecord as exc:
        await dead_letter(event, str(exc), kind="bad_record")
        return
    match message:
        case e.OrderStatusChanged():
            correlation_id = header(event, CORRELATION_HEADER)
            batch.statuses.append(message)
            batch.correlation_ids.append(correlation_id)
            if message.audit:
                ctx = AuditContext(correlation_id, header(event, ACTOR_HEADER), header(event, ROLES_HEADER))
                batch.audit.extend((entry, ctx) for entry in message.audit)
        case e.AuditEntry():
            ctx = AuditContext(
                header(event, CORRELATION_HEADER), header(event, ACTOR_HEADER), header(event, ROLES_HEADER)
            )
            batch.audit.append((message, ctx))
        case e.StockLevelChanged():
            batch.levels.append(message)
        case e.StockAdjusted() | e.AdjustmentRejected():
            batch.adjustments.append(message)
        case e.LowStockDetected():
            pass  # alerts are the emails' and the websocket's business
        case _:
            await dead_letter(event, f"{type(message).__name__} is not projected", kind="wrong_topic")
            return
    notify.collect(event, message)


@app.agent(projection_inputs, concurrency=1)
async def project(stream: faust.StreamT[bytes]) -> None:
    """Batch events into one transaction each, then queue their emails; retry while
    PostgreSQL is away. The batch is acknowledged once both are written."""
    await runtime.ready()
    await handle_in_batches(stream, handle_event, batch, notify.batch, what="projection")
