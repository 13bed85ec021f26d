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
import ctypes
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import mode
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from .. import logs, metrics, records, tracing
from .. import topics as t
from ..adapters import kafka_auth
from ..adapters.postgres import AuditContext
from ..bootstrap import Runtime, tune_gc
from ..domain import events as e
from ..domain.retry import Backoff
from ..faust_fixes import FETCH_MAX_WAIT_MS
from ..partitioner import Murmur2Partitioner
from .common import (
    ACTOR_HEADER,
    CORRELATION_HEADER,
    ROLES_HEADER,
    DeadLetterSend,
    dead_letter,
    header,
    unpack,
    until_done,
)
from .notify import Emails

if TYPE_CHECKING:
    from ..app import Orion
    from ..config import Settings

log = logging.getLogger("orion.projection")
TOPICS = (t.ORDER_STATUS.name, t.ORDER_AUDIT.name, t.STOCK_LEVELS.name)
# Records per transaction; a batch record carries up to records.BATCH_LIMIT messages.
BATCH_SIZE = 100


def pause_before_batch(began: float, full: bool, interval: float, now: float) -> float:
    """How long to wait before taking the next batch: transactions at most every `interval`
    seconds while records come in a few at a time, so each carries more of them (a
    transaction and an offset commit cost about the same for one record as for a hundred);
    none after a full batch, when a backlog is waiting."""
    return 0.0 if full else max(0.0, began + interval - now)


def group_id(settings: Settings) -> str:
    """The projection's consumer group: the app's id with -projection."""
    return f"{settings.app_id}-projection"


class Projection:
    """One batch of events bound for PostgreSQL. `written()` makes it one transaction, so
    the batch loop acknowledges the events only once they are in the database."""

    def __init__(self, runtime: Runtime, emails: Emails) -> None:
        self.runtime, self.emails = runtime, emails
        self._reset()

    def _reset(self) -> None:
        self.statuses: list[e.OrderStatusChanged] = []
        self.audit: list[tuple[e.AuditEntry, AuditContext]] = []
        self.levels: list[e.StockLevelChanged] = []
        self.adjustments: list[e.StockAdjusted | e.AdjustmentRejected] = []
        self.correlation_ids: list[str | None] = []  # of each status change, for the log

    async def written(self) -> None:
        """The batch and the emails it asks for, in one transaction."""
        emails = self.emails.take()
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
            self.emails.logged(emails, added)
        self._reset()

    async def _write(self, emails: list[Any]) -> set[str]:
        store = self.runtime.store
        async with store.engine.begin() as conn:
            await store.project_in(conn, self.statuses, self.audit, self.levels, self.adjustments)
            return set(await self.runtime.notifications.enqueue_in(conn, emails))


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


class Projector:
    """Reads consumed records into the batch; a record that cannot be projected is parked
    (dead-lettered through `send`) with why."""

    def __init__(self, batch: Projection, send: DeadLetterSend) -> None:
        self.batch, self.send = batch, send

    async def handle_event(self, event: Any) -> None:
        try:
            message = records.decode(event.value)
        except records.BadRecord as exc:
            await dead_letter(event, str(exc), kind="bad_record", send=self.send)
            return
        match message:
            case e.OrderStatusChanged():
                correlation_id = header(event, CORRELATION_HEADER)
                self.batch.statuses.append(message)
                self.batch.correlation_ids.append(correlation_id)
                if message.audit:
                    ctx = AuditContext(correlation_id, header(event, ACTOR_HEADER), header(event, ROLES_HEADER))
                    self.batch.audit.extend((entry, ctx) for entry in message.audit)
            case e.AuditEntry():
                ctx = AuditContext(
                    header(event, CORRELATION_HEADER), header(event, ACTOR_HEADER), header(event, ROLES_HEADER)
                )
                self.batch.audit.append((message, ctx))
            case e.StockLevelChanged():
                self.batch.levels.append(message)
            case e.StockAdjusted() | e.AdjustmentRejected():
                self.batch.adjustments.append(message)
            case e.LowStockDetected():
                pass  # alerts are the emails' and the websocket's business
            case _:
                await dead_letter(event, f"{type(message).__name__} is not projected", kind="wrong_topic", send=self.send)
                return
        self.batch.emails.collect(event, message)

    async def handle(self, record: Any) -> None:
        """A consumed record: a batch record's items one by one, else the record itself."""
        event: Any = Received(record.key, record.value, record.headers,
                              _Where(record.topic, record.partition, record.offset, record.timestamp))
        try:
            messages = unpack(event)
        except records.BadRecord as exc:
            await dead_letter(event, str(exc), kind="bad_record", send=self.send)
            return
        for message in messages:
            await self._handle_one(message)

    async def _handle_one(self, event: Any) -> None:
        where = event.message
        try:
            with logs.bound(correlation_id=header(event, CORRELATION_HEADER)):
                if tracing.enabled():
                    with tracing.span("projection", "consumer", attributes={
                        "messaging.system": "kafka", "messaging.destination.name": where.topic,
                        "messaging.destination.partition.id": str(where.partition),
                        "messaging.kafka.offset": where.offset,
                    }):
                        await self.handle_event(event)
                else:
                    await self.handle_event(event)
        except Exception:
            # A bug must not wedge the partition forever; the message is parked with why.
            log.exception("projection failed on %s[%d]@%d", where.topic, where.partition, where.offset)
            await dead_letter(event, "internal error in the projection", kind="internal_error", send=self.send)


class Consumer:
    """The projection's consumer loop; reconnects with backoff whatever goes wrong."""

    def __init__(self, settings: Settings, runtime: Runtime, projector: Projector) -> None:
        self.settings, self.runtime, self.projector = settings, runtime, projector
        self.consumer: AIOKafkaConsumer | None = None
        self.committed: dict[TopicPartition, int] = {}

    async def run(self) -> None:
        settings = self.settings
        await self.runtime.ready()
        backoff = Backoff(0.5, 30.0)
        while True:
            consumer = AIOKafkaConsumer(
                *TOPICS, bootstrap_servers=settings.kafka_bootstrap, group_id=group_id(settings),
                client_id=f"{group_id(settings)}-{settings.worker_id}", enable_auto_commit=False,
                auto_offset_reset="earliest", max_poll_records=BATCH_SIZE, fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                session_timeout_ms=int(settings.session_timeout * 1000),
                heartbeat_interval_ms=max(100, int(settings.session_timeout * 100)),
                **kafka_auth.client_options(settings),
            )
            try:
                await consumer.start()
                self.consumer = consumer
                backoff.reset()
                await self._consume(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka away, a rebalance gone wrong: start again
                log.warning("projection consumer: %r; starting again", exc)
            finally:
                self.consumer = None
                self.committed.clear()
                with contextlib.suppress(Exception):
                    await asyncio.shield(consumer.stop())
            await asyncio.sleep(backoff.next())  # backoff before reconnecting

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        began, full = 0.0, False
        while True:
            pause = pause_before_batch(began, full, self.settings.projection_interval, time.monotonic())
            if pause > 0:
                await asyncio.sleep(pause)  # the next records gather in the fetcher meanwhile
            await self._learn_committed(consumer)
            got = await consumer.getmany(timeout_ms=1000, max_records=BATCH_SIZE)
            if not got:
                continue
            began, full = time.monotonic(), sum(len(rs) for rs in got.values()) >= BATCH_SIZE
            for records_of_tp in got.values():
                for record in records_of_tp:
                    await self.projector.handle(record)
            await self.projector.batch.written()
            offsets = {tp: rs[-1].offset + 1 for tp, rs in got.items() if rs}
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:  # a rebalance took them: the next owner writes them again
                log.info("projection commit not taken (%r); the partitions' next owner repeats it", exc)
                continue
            self.committed.update(offsets)

    async def _learn_committed(self, consumer: AIOKafkaConsumer) -> None:
        """The group's committed offset of each partition assigned since the last look (one
        request per partition and assignment), so a partition written before a restart or a
        rebalance, and quiet since, counts no lag."""
        assigned = consumer.assignment()
        for tp in [tp for tp in self.committed if tp not in assigned]:
            del self.committed[tp]
        for tp in assigned - self.committed.keys():
            try:
                self.committed[tp] = await consumer.committed(tp) or 0
            except KafkaError as exc:  # the coordinator is moving: ask again next round
                log.debug("committed offset of %s unknown: %r", tp, exc)
                return

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



# -- the projection's own process (ORION_PROJECTION=process) ---------------------------------

REPORT_FD_ENV = "ORION_PROJECTION_REPORT_FD"  # where the child reports its lag to the worker


class Child:
    """The worker's projection in a process of its own: the worker's event loop keeps its
    core for deciding orders (python -m bench.hotpath: the projection was a quarter of it).
    The worker starts it, starts it again with backoff whenever it exits, stops it when it
    stops, and the kernel kills it if the worker dies (no orphan keeps consuming). The child
    reports its lag once a second over a pipe; the worker's /metrics shows it as before."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: asyncio.subprocess.Process | None = None
        self.reported: dict[TopicPartition, int] = {}

    async def run(self) -> None:
        backoff = Backoff(0.5, 30.0)
        try:
            while True:
                started = time.monotonic()
                code = await self._once()
                if time.monotonic() - started > 60:
                    backoff.reset()  # it ran for a while: a fresh failure, not a crash loop
                pause = backoff.next()
                log.warning("projection process exited with code %s; starting it again in %.1fs", code, pause)
                await asyncio.sleep(pause)  # backoff before restarting
        finally:
            await asyncio.shield(self.stop())

    async def _once(self) -> int:
        read_fd, write_fd = os.pipe()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "orion_streams.cli", "projection",
                env={**os.environ, **self.settings.to_env(), REPORT_FD_ENV: str(write_fd)}, pass_fds=(write_fd,),
                stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        proc = self.proc
        log.info("projection process %d started", proc.pid)
        reports = asyncio.ensure_future(self._read_reports(read_fd))
        try:
            return await proc.wait()
        finally:
            reports.cancel()
            self.reported = {}
            metrics.process_exited(proc.pid)

    async def _read_reports(self, fd: int) -> None:
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
        try:
            async for line in reader:
                with contextlib.suppress(ValueError, TypeError):
                    report = json.loads(line)
                    self.reported = {TopicPartition(tp, p): lag for tp, p, lag in report["lag"]}
        finally:
            transport.close()

    async def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 10 s) and wait for it."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def _prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()  # looked up before any fork: a child may not load libraries safely


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the worker dies (PR_SET_PDEATHSIG)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)


def consumer_for(settings: Settings, runtime: Runtime, dead_letters: DeadLetterSend) -> Consumer:
    """A projection consumer writing through `runtime`, parking records with `dead_letters`."""
    batch = Projection(runtime, Emails(settings, lambda: runtime.catalog))
    return Consumer(settings, runtime, Projector(batch, dead_letters))


class ProjectionRunner:
    """This worker's projection, where ORION_PROJECTION says: on the worker's loop
    (inline), in a child process (process) or nowhere (off)."""

    def __init__(self, settings: Settings, consumer: Consumer) -> None:
        self.settings, self.consumer = settings, consumer
        self.child = Child(settings)

    def lag(self) -> dict[TopicPartition, int]:
        """Records the projection has not written yet, per partition it owns in this worker."""
        return self.child.reported if self.settings.projection == "process" else self.consumer.lag()

    async def run(self) -> None:
        if self.settings.projection == "inline":
            await self.consumer.run()
        elif self.settings.projection == "process":
            await self.child.run()


class ProjectionService(mode.Service):
    """Runs the projection; mode cancels it when the worker stops."""

    def __init__(self, runner: ProjectionRunner, **kwargs: Any) -> None:
        self.runner = runner
        super().__init__(**kwargs)

    @mode.Service.task
    async def _consume(self) -> None:
        await self.runner.run()

    async def on_stop(self) -> None:
        await self.runner.child.stop()


def register(orion: Orion) -> ProjectionRunner:
    """This worker's projection, started with the app's services (after table recovery)."""
    runner = ProjectionRunner(orion.settings, consumer_for(orion.settings, orion.runtime, orion.bus.send_dead_letter))
    orion.app.service(cast(Any, ProjectionService(runner, beacon=orion.app.beacon)))
    return runner


class _DeadLetters:
    """Dead letters of the projection's own process, through a producer of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer: AIOKafkaProducer | None = None

    async def __call__(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        if self.producer is None:
            settings = self.settings
            producer = AIOKafkaProducer(
                bootstrap_servers=settings.kafka_bootstrap, acks="all", client_id=f"{group_id(settings)}-{settings.worker_id}",
                partitioner=Murmur2Partitioner(), **kafka_auth.client_options(settings),
            )
            await producer.start()
            self.producer = producer
        await (await self.producer.send(t.DEAD_LETTERS.name, value, key=key, headers=headers))

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.stop()


def main(settings: Settings) -> None:
    """`orion projection`: the projection in this process until SIGTERM or SIGINT (the
    worker runs it so; run it yourself beside workers started with ORION_PROJECTION=off)."""
    logs.configure(settings.log_format, settings.log_level, settings.worker_id)
    tracing.configure("orion-worker", settings.worker_id)
    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.install()
    tune_gc()
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runtime = Runtime(settings)
    dead_letters = _DeadLetters(settings)
    consumer = consumer_for(settings, runtime, dead_letters)
    report_fd = int(os.environ[REPORT_FD_ENV]) if os.environ.get(REPORT_FD_ENV) else None
    tasks = [asyncio.ensure_future(consumer.run()), asyncio.ensure_future(_refresh_catalog(runtime))]
    if report_fd is not None:
        tasks.append(asyncio.ensure_future(_report(report_fd, stop, consumer)))
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await dead_letters.close()
        await runtime.close()
        metrics.process_exited()
        await asyncio.to_thread(tracing.shutdown)


async def _report(fd: int, stop: asyncio.Event, consumer: Consumer) -> None:
    """Tell the worker this process's lag once a second; stop when the worker is gone."""
    while True:
        line = json.dumps({"lag": [[tp.topic, tp.partition, n] for tp, n in consumer.lag().items()]})
        try:
            os.write(fd, line.encode() + b"\n")
        except OSError:  # the worker closed its end: it is stopping or gone
            stop.set()
            return
        await asyncio.sleep(1.0)  # a report interval, not a wait for a condition


async def _refresh_catalog(runtime: Runtime) -> None:
    """Product names for the emails, refreshed as the worker refreshes its catalog."""
    while True:
        await asyncio.sleep(30.0)  # the refresh interval
        try:
            await (await runtime.ready()).refresh_catalog()
        except Exception as exc:  # the database may be away; the next round tries again
            log.warning("catalog refresh failed: %s", exc)
