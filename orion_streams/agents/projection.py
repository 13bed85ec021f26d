"""The projection: order states, the audit trail and stock levels into PostgreSQL, then the
emails they ask for (agents/notify.py), one batch at a time.

It is a consumer group of its own (`<app id>-projection`), not a Faust agent: it keeps no
table, so it needs none of Faust's machinery, and a record costs it a fifth of what a Faust
agent pays for one here (python -m bench.hotpath). Each worker runs one; Kafka shares the
partitions of order-status, order-audit and stock-levels between them. A batch's offsets are
committed after its transaction, so a batch is written at least once (after a crash or a
rebalance, again by the next owner): the writes are idempotent (newer versions win, repeats
are ignored) and the emails are queued once per key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Any

import mode
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from .. import logs, records, tracing
from .. import topics as t
from ..adapters.postgres import AuditContext
from ..app import app, runtime, settings
from ..domain import events as e
from . import notify
from .common import (
    ACTOR_HEADER,
    CORRELATION_HEADER,
    ROLES_HEADER,
    dead_letter,
    header,
    until_done,
)

log = logging.getLogger("orion.projection")
TOPICS = (t.ORDER_STATUS.name, t.ORDER_AUDIT.name, t.STOCK_LEVELS.name)
BATCH_SIZE = 500


def group_id() -> str:
    """The projection's consumer group: the app's id with -projection."""
    return f"{settings.app_id}-projection"


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
        """The batch and the emails it asks for, in one transaction."""
        emails = notify.batch.take()
        if self.statuses or self.audit or self.levels or self.adjustments or emails:
            with tracing.span(
                "projection write",
                links=[*self.correlation_ids, *(ctx.correlation_id for _, ctx in self.audit),
                       *(n.correlation_id for n in emails)],
                attributes={"orion.batch.statuses": len(self.statuses), "orion.batch.audit": len(self.audit),
                            "orion.batch.emails": len(emails)},
            ):
                added = await until_done(lambda: self._write(emails), "projection write")
            for change, cid in zip(self.statuses, self.correlation_ids, strict=True):
                if logs.per_order.allow():
                    with logs.bound(correlation_id=cid, order_id=change.order_id):
                        log.info("stored order status %s (version %d)", change.status.value, change.version)
            notify.batch.logged(emails, added)
        self._reset()

    async def _write(self, emails: list[Any]) -> set[str]:
        store = runtime.store
        async with store.engine.begin() as conn:
            await store.project_in(conn, self.statuses, self.audit, self.levels, self.adjustments)
            return set(await runtime.notifications.enqueue_in(conn, emails))


batch = Projection()


@dataclass(slots=True)
class _Where:
    topic: str
    partition: int
    offset: int
    timestamp: float | None


@dataclass(slots=True)
class Received:
    """A consumed record with the attributes of a Faust event the helpers read (key, value,
    headers, message.topic/partition/offset)."""

    key: bytes | None
    value: bytes | None
    headers: Any
    message: _Where


async def handle_event(event: Any) -> None:
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


async def _handle(record: Any) -> None:
    event: Any = Received(record.key, record.value, record.headers,
                     _Where(record.topic, record.partition, record.offset, record.timestamp))
    try:
        with logs.bound(correlation_id=header(event, CORRELATION_HEADER)):
            if tracing.enabled():
                with tracing.span("projection", "consumer", attributes={
                    "messaging.system": "kafka", "messaging.destination.name": record.topic,
                    "messaging.destination.partition.id": str(record.partition),
                    "messaging.kafka.offset": record.offset,
                }):
                    await handle_event(event)
            else:
                await handle_event(event)
    except Exception:
        # A bug must not wedge the partition forever; the record is parked with why.
        log.exception("projection failed on %s[%d]@%d", record.topic, record.partition, record.offset)
        await dead_letter(event, "internal error in the projection", kind="internal_error")


class Consumer:
    """The projection's consumer loop; reconnects with backoff whatever goes wrong."""

    def __init__(self) -> None:
        self.consumer: AIOKafkaConsumer | None = None
        self.committed: dict[TopicPartition, int] = {}

    async def run(self) -> None:
        await runtime.ready()
        delay = 0.5
        while True:
            consumer = AIOKafkaConsumer(
                *TOPICS, bootstrap_servers=settings.kafka_bootstrap, group_id=group_id(),
                client_id=f"{group_id()}-{settings.worker_id}", enable_auto_commit=False,
                auto_offset_reset="earliest", max_poll_records=BATCH_SIZE,
                session_timeout_ms=int(settings.session_timeout * 1000),
                heartbeat_interval_ms=max(100, int(settings.session_timeout * 100)),
            )
            try:
                await consumer.start()
                self.consumer, delay = consumer, 0.5
                await self._consume(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka away, a rebalance gone wrong: start again
                log.warning("projection consumer: %r; starting again in %.1fs", exc, delay)
            finally:
                self.consumer = None
                self.committed.clear()
                with contextlib.suppress(Exception):
                    await asyncio.shield(consumer.stop())
            await asyncio.sleep(delay * (0.5 + random.random()))  # backoff before reconnecting
            delay = min(delay * 2, 30.0)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            got = await consumer.getmany(timeout_ms=1000, max_records=BATCH_SIZE)
            if not got:
                continue
            for records_of_tp in got.values():
                for record in records_of_tp:
                    await _handle(record)
            await batch.written()
            offsets = {tp: rs[-1].offset + 1 for tp, rs in got.items() if rs}
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:  # a rebalance took them: the next owner writes them again
                log.info("projection commit not taken (%r); the partitions' next owner repeats it", exc)
                continue
            self.committed.update(offsets)

    def lag(self) -> dict[TopicPartition, int]:
        """Records not yet written, per partition this worker's projection owns."""
        consumer = self.consumer
        if consumer is None:
            return {}
        out = {}
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is not None:
                out[tp] = max(0, end - self.committed.get(tp, 0))
        return out


consumer = Consumer()


@app.service
class ProjectionService(mode.Service):
    """Runs this worker's projection consumer; mode cancels it when the worker stops."""

    @mode.Service.task
    async def _consume(self) -> None:
        await consumer.run()
