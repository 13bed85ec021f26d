"""The dead-letter index: every record of `dead-letters` as a row of PostgreSQL's
`dead_letters`, so operators can list, read and replay them (`/v1/dead-letters`).

A consumer group of its own (`<app id>-dead-letters`), one consumer per worker beside the
projection (and off when it is): Kafka shares the topic's partitions between the workers.
Offsets are committed after the rows, and a row is keyed by the record's partition and
offset, so a record read twice is indexed once. Dead letters are rare: the consumer waits in
long fetches and costs next to nothing while there are none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, cast

import mode
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from .. import topics as t
from ..adapters import kafka_auth
from ..domain.retry import Backoff
from ..services.dead_letters import row_from_record

if TYPE_CHECKING:
    from ..app import Orion
    from ..bootstrap import Runtime
    from ..config import Settings

log = logging.getLogger("orion.dead_letters")
BATCH = 200


def group_id(settings: Settings) -> str:
    return f"{settings.app_id}-dead-letters"


class DeadLetterIndex:
    """Reads `dead-letters` into PostgreSQL; reconnects with backoff whatever goes wrong."""

    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        self.settings, self.runtime = settings, runtime
        self.indexed = 0

    async def run(self) -> None:
        settings = self.settings
        backoff = Backoff(0.5, 30.0)
        while True:
            consumer = AIOKafkaConsumer(
                t.DEAD_LETTERS.name, bootstrap_servers=settings.kafka_bootstrap, group_id=group_id(settings),
                client_id=f"{group_id(settings)}-{settings.worker_id}", enable_auto_commit=False,
                auto_offset_reset="earliest", max_poll_records=BATCH,
                session_timeout_ms=int(settings.session_timeout * 1000),
                heartbeat_interval_ms=max(100, int(settings.session_timeout * 100)),
                **kafka_auth.client_options(settings),
            )
            try:
                await self.runtime.ready()
                await consumer.start()
                backoff.reset()
                await self._consume(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka or PostgreSQL away, a rebalance gone wrong: start again
                log.warning("dead-letter index: %r; starting again", exc)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(consumer.stop())
            await asyncio.sleep(backoff.next())

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        store = self.runtime.dead_letters
        while True:
            got = await consumer.getmany(timeout_ms=5000, max_records=BATCH)
            if not got:
                continue
            rows = [
                row_from_record(record.partition, record.offset, record.value, record.headers or (), record.timestamp)
                for records_of_tp in got.values() for record in records_of_tp
            ]
            new = await store.index(rows)
            self.indexed += new
            if new:
                log.info("indexed %d dead letter(s)", new)
            try:
                await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in got.items() if rs})
            except KafkaError as exc:  # a rebalance took them: the next owner indexes them again (a no-op)
                log.info("dead-letter index commit not taken (%r)", exc)


class DeadLetterIndexService(mode.Service):
    def __init__(self, index: DeadLetterIndex, **kwargs: Any) -> None:
        self.index = index
        super().__init__(**kwargs)

    @mode.Service.task
    async def _consume(self) -> None:
        await self.index.run()


def register(orion: Orion) -> DeadLetterIndex | None:
    """The worker's dead-letter index, beside its projection (none when the projection is off)."""
    if orion.settings.projection == "off":
        return None
    index = DeadLetterIndex(orion.settings, orion.runtime)
    orion.app.service(cast(Any, DeadLetterIndexService(index, beacon=orion.app.beacon)))
    return index
