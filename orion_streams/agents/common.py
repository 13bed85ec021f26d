"""What every agent does alike: clocks, headers, sending, dead letters, partitioning."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import faust
import orjson
from aiokafka.errors import KafkaError

from .. import logs, metrics, records, tracing
from .. import topics as t
from ..domain.retry import Backoff
from ..domain.saga import Clock
from ..partitioner import partition_for as partition_for  # the agents take it from here

log = logging.getLogger("orion.agents")

CORRELATION_HEADER = "correlation-id"
# Events handled per batch by the table-writing agents, and how long a batch may wait to fill.
BATCH_SIZE = 256
BATCH_WITHIN = 0.01
ACTOR_HEADER = "actor"
# Comma-separated roles of the actor (e.g. "customer", "service"); absent when unknown.
ROLES_HEADER = "actor-roles"
# What the audit trail says when a producer identified nobody.
UNIDENTIFIED = "external:unidentified"


_last: tuple[int, Clock] = (-1, Clock("", 0.0))


def now() -> Clock:
    """The time to the millisecond, as the events record it. A batch handles many events
    within one millisecond: they share one Clock."""
    global _last
    millis = int(time.time() * 1000)
    if millis != _last[0]:
        epoch = millis / 1000
        _last = (millis, Clock(iso=records.utc_iso(epoch, "milliseconds"), epoch=epoch))
    return _last[1]


def _raw_header(event: Any, name: str) -> Any:
    headers = event.headers
    if not headers:
        return None
    if isinstance(headers, list | tuple):  # as consumed: a scan, not a dict per look-up
        found = None
        for key, value in headers:
            if key == name:
                found = value  # a repeated header counts with its last value, as in a dict
        return found
    return headers.get(name) if isinstance(headers, Mapping) else dict(headers).get(name)


def header(event: Any, name: str) -> str | None:
    """An identity header's text, or None when absent or unsafe (`records.header_text`)."""
    value, problem = records.header_text(name, _raw_header(event, name))
    if problem is not None:
        metrics.HEADERS_DROPPED.labels(name).inc()
        log.warning(
            "header %s of %s[%s]@%s dropped: %s", name, event.message.topic, event.message.partition,
            event.message.offset, problem,
        )
    return value


def dropped_headers(event: Any) -> dict[str, str]:
    """The identity headers an event carried that are unsafe, with the reason, for the audit."""
    out = {}
    for name in (CORRELATION_HEADER, ACTOR_HEADER, ROLES_HEADER):
        _, problem = records.header_text(name, _raw_header(event, name))
        if problem is not None:
            out[name] = problem
    return out


def make_headers(
    correlation_id: str | None, actor: str | None, roles: str | None = None
) -> list[tuple[str, bytes]]:
    """The identity headers every Orion event carries on to the events it causes."""
    out = []
    if correlation_id:
        out.append((CORRELATION_HEADER, correlation_id.encode()))
    if actor:
        out.append((ACTOR_HEADER, actor.encode()))
    if roles:
        out.append((ROLES_HEADER, roles.encode()))
    return out


def identity(event: Any) -> list[tuple[str, bytes]]:
    """An incoming event's correlation id, actor and roles, to pass on unchanged."""
    return make_headers(header(event, CORRELATION_HEADER), header(event, ACTOR_HEADER), header(event, ROLES_HEADER))


# A message to send: topic name, key, the message, headers.
Send = tuple[str, str, Any, list[tuple[str, bytes]]]
# Sends a dead letter (key, value, headers) and waits for the broker's acknowledgement.
DeadLetterSend = Callable[[bytes | None, bytes, list[tuple[str, bytes]]], Awaitable[None]]


class Bus:
    """How the agents and views reach Kafka: the worker's producer (Faust's, which exists
    once the app runs; `producer` is asked each time) and the topics' partition count."""

    def __init__(self, producer: Callable[[], Any], partitions: int) -> None:
        self._producer = producer
        self.partitions = partitions

    @property
    def producer(self) -> Any:
        return self._producer()

    async def enqueue(self, sends: Iterable[Send]) -> list[Any]:
        """Hand messages to the producer, in order; returns the futures of their acks (each
        resolves to where the message landed: RecordMetadata topic, partition, offset)."""
        # Straight to the producer: Faust's Topic.send wraps each record in a pending
        # message with sensors and callbacks, a fifth of the CPU of a send (bench/hotpath.py).
        producer = self.producer
        return [
            await producer.send(topic, key.encode(), records.encode(message), None, None, headers)
            for topic, key, message, headers in sends
        ]

    async def send_raw(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]],
                       partition: int | None = None) -> Any:
        """Send bytes as they are and wait for the broker; returns where they landed."""
        return await (await self.producer.send(topic, key, value, partition, None, headers))

    async def send_dead_letter(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        await self.send_raw(t.DEAD_LETTERS.name, key, value, headers)

    async def dead_letter(self, event: Any, reason: str, *, kind: str) -> None:
        """Park a message that cannot be processed (see `dead_letter`)."""
        await dead_letter(event, reason, kind=kind, send=self.send_dead_letter)


class Assignment:
    """The partitions this worker owns, as Faust's assignor has them."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    def recovered(self) -> bool:
        """The tables' recovery is complete (as of the last rebalance)."""
        app: Any = self._app
        return bool(app.tables.recovery.completed.is_set())

    def settled(self) -> bool:
        """No rebalance under way and the tables recovered: the assignment can be trusted."""
        return not self._app.rebalancing and self.recovered()

    def owned(self, topic: str) -> set[int] | None:
        """The partitions of `topic` this worker owns, or None while it is not settled."""
        if not self.settled():
            return None
        return {tp.partition for tp in self._app.assignor.assigned_actives() if tp.topic == topic}


# What agents send goes out as batch records (records.encode_batch): the events they publish
# (sent first: a stock level before the answers that count on it), then requests and answers.
PUBLISHED_TOPICS = (t.ORDER_STATUS.name, t.ORDER_AUDIT.name, t.STOCK_LEVELS.name)
REQUEST_TOPICS = (t.STOCK_REQUESTS.name, t.ORDER_EVENTS.name, t.PAYMENT_REQUESTS.name)
BATCHED_TOPICS = frozenset(PUBLISHED_TOPICS + REQUEST_TOPICS)
_SEND_ORDER = {name: i for i, name in enumerate(PUBLISHED_TOPICS + REQUEST_TOPICS)}
_BATCH_HEADERS = [(records.BATCH_HEADER, b"1")]


@dataclass(slots=True, frozen=True)
class ItemWhere:
    """Where an item of a batch record came from: the record's place and the item's index."""

    topic: str
    partition: int
    offset: int
    timestamp: float | None
    index: int

    @property
    def tp(self) -> Any:
        return (self.topic, self.partition)


@dataclass(slots=True)
class Item:
    """One message of a batch record, with the attributes of a Faust event the handlers
    read (key, value, headers, message.topic/partition/offset/timestamp)."""

    key: bytes
    value: Any  # the parsed message
    headers: list[tuple[str, bytes]]
    message: ItemWhere


def unpack(event: Any) -> list[Any]:
    """The messages a consumed record carries: the items of a batch record, else itself.
    Raises records.BadRecord for a batch record that cannot be read."""
    if _raw_header(event, records.BATCH_HEADER) is None:
        return [event]
    msg = event.message
    return [
        Item(key.encode(), value, headers, ItemWhere(msg.topic, msg.partition, msg.offset, msg.timestamp, i))
        for i, (key, headers, value) in enumerate(records.decode_batch(event.value))
    ]


def position(event: Any) -> Any:
    """Where a message sits in its partition, the same each time it is delivered: its
    offset, or [offset, index] for an item of a batch record (as stored in JSON)."""
    msg = event.message
    return [msg.offset, msg.index] if isinstance(msg, ItemWhere) else msg.offset


# Told where a sent message landed (its RecordMetadata), once the broker has it.
OnSent = Callable[[Any], None]


class Outbox:
    """What a batch of events must send, then the table changes it made.

    Agents handle events in batches and make one round trip to the broker for all the
    sends and one for all the table changes, instead of two per event. Sends go first:
    if the process dies in between, the whole batch is redelivered (it is acknowledged
    only after `flush`), the sends repeat, and every consumer dedupes them.
    """

    def __init__(self, bus: Bus, *tables: Any) -> None:
        self.bus = bus
        self.sends: list[Send | None] = []
        self.on_sent: list[OnSent | None] = []
        self.tables = tables
        self._latest: dict[tuple[str, str], int] = {}

    def send(
        self, topic: str, key: str, message: Any, headers: list[tuple[str, bytes]],
        on_sent: OnSent | None = None,
    ) -> None:
        self.sends.append((topic, key, message, headers))
        self.on_sent.append(on_sent)

    def send_latest(self, topic: str, key: str, message: Any, headers: list[tuple[str, bytes]]) -> None:
        """Send a state that supersedes the earlier ones of `key` (a stock level with its
        version): only the last of the batch goes out, in the place of the last."""
        slot = (topic, key)
        earlier = self._latest.get(slot)
        if earlier is not None:
            self.sends[earlier] = None
        self._latest[slot] = len(self.sends)
        self.send(topic, key, message, headers)

    async def flush(self) -> None:
        """Send everything, wait for the broker, then write the table changes."""
        flight = await self.launch()
        await flight.sent()
        await flight.write_tables()

    async def launch(self) -> Flight:
        """Hand the sends to the producer now, in order, and take the table changes made so
        far; the returned flight waits for them (`sent`) and writes the changes after
        (`write_tables`), while the agent goes on with its next batch."""
        kept = [(s, cb) for s, cb in zip(self.sends, self.on_sent, strict=True) if s is not None]
        self.sends, self.on_sent, self._latest = [], [], {}
        # One batch record per topic and partition, its items in send order.
        batches: dict[tuple[str, int], list[tuple[str, bytes, list[tuple[str, bytes]], OnSent | None]]] = {}
        singles, single_callbacks = [], []
        for (name, key, message, headers), callback in kept:
            if name in BATCHED_TOPICS:
                slot = (name, partition_for(key, self.bus.partitions))
                batches.setdefault(slot, []).append((key, records.encode(message), headers, callback))
            else:
                singles.append((name, key, message, headers))
                single_callbacks.append(callback)
        futures: list[Any] = await self.bus.enqueue(singles)
        for single, callback in zip(futures, single_callbacks, strict=True):
            if callback is not None:
                single.add_done_callback(_tell(callback))
        producer = self.bus.producer
        # Published events before requests and answers; all acknowledged before the table
        # changes are written.
        for (name, partition), items in sorted(batches.items(), key=lambda kv: _SEND_ORDER[kv[0][0]]):
            for chunk in records.chunks(items):
                value = records.encode_batch([(key, raw, headers) for key, raw, headers, _ in chunk])
                future: Any = await producer.send(name, None, value, partition, None, _BATCH_HEADERS)
                for *_, callback in chunk:
                    if callback is not None:
                        future.add_done_callback(_tell(callback))
                futures.append(future)
        return Flight(futures, [(table, table.take()) for table in self.tables])


def _tell(callback: OnSent) -> Callable[[asyncio.Future[Any]], None]:
    """Call `callback` with where the message landed, as soon as the broker has it (before
    anything can answer it), and never for a send that failed."""

    def done(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            callback(future.result())

    return done


class Flight:
    """A batch's sends on their way to the broker and the table changes to write after."""

    def __init__(self, futures: list[Any], changes: list[tuple[Any, list[Any]]]) -> None:
        self.futures, self.changes = futures, changes

    async def sent(self) -> None:
        if self.futures:
            await asyncio.gather(*self.futures)

    async def write_tables(self) -> None:
        for table, changes in self.changes:
            if changes:
                await table.write(changes)


class OrderedAcks:
    """Acknowledges events in offset order per partition, however their handling interleaves.

    Faust commits up to the first offset not acknowledged, and counts an acknowledged
    offset right after the committed one as contiguous even when the one before it is
    still in flight (faust-streaming 606): acknowledging a later event first could commit
    past an earlier one that never finishes if the worker dies.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._open: dict[Any, deque[list[Any]]] = {}

    def started(self, event: faust.EventT[bytes]) -> None:
        self._open.setdefault(event.message.tp, deque()).append([event, False])

    async def done(self, event: faust.EventT[bytes]) -> None:
        queue = self._open.get(event.message.tp)
        if not queue:
            return
        for entry in queue:
            if entry[0] is event:
                entry[1] = True
                break
        while queue and queue[0][1]:
            await self._stream.ack(queue.popleft()[0])
        if not queue:
            del self._open[event.message.tp]


Handler = Callable[[Any, Outbox], Awaitable[None]]  # a Faust event or an Item
T = TypeVar("T")


async def until_done(write: Callable[[], Awaitable[T]], what: str) -> T:
    """Retry a database write with backoff until it succeeds: the batch it belongs to is
    acknowledged only afterwards, so nothing is dropped while PostgreSQL is away."""
    backoff = Backoff(0.1, 5.0)
    while True:
        try:
            return await write()
        except Exception as exc:  # the database is away or refused: never drop the batch
            pause = backoff.next()
            log.warning("%s failed (attempt %d): %s; retrying in %.1fs", what, backoff.attempt, exc, pause)
            await asyncio.sleep(pause)  # backoff while the database is away


# Work an agent does between batches, in its own turn (it may write the agent's tables).
Housekeeping = Callable[[Outbox], Awaitable[None]]


async def handle_in_batches(
    stream: faust.StreamT[bytes], handle: Handler, bus: Bus, *tables: Any, what: str,
    housekeeping: Housekeeping | None = None, every: float = 1.0,
) -> None:
    """The loop of a table-writing agent: events in order, acknowledged only after the
    batch's sends and table changes are in Kafka.

    Acks are manual (`noack`): Faust's own batching (`take_events`) acknowledges a batch in
    a `finally`, so a batch cut short during a rebalance could be committed unprocessed.
    A batch is flushed when it is full or the stream has been quiet for BATCH_WITHIN.
    `housekeeping` runs every `every` seconds between batches, under the same lock, so it
    is the agent itself (the single writer of its tables) that does it.
    """
    manual = stream.noack()  # type: ignore[attr-defined]
    outbox = Outbox(bus, *tables)
    pending: list[faust.EventT[bytes]] = []
    handled = 0  # messages in `pending` (a batch record carries many)
    lock = asyncio.Lock()
    chores = metrics.HOUSEKEEPING.labels(what)
    landing: asyncio.Future[None] | None = None  # the last batch still on its way
    failed: BaseException | None = None  # a batch that could not land stops the agent

    async def land(flight: Flight, before: asyncio.Future[None] | None, batch: list[faust.EventT[bytes]]) -> None:
        nonlocal failed
        try:
            await flight.sent()
            if before is not None:
                await before  # table changes reach the changelog in the order they were made
            await flight.write_tables()
        except BaseException as exc:
            failed = failed or exc
            raise
        for event in batch:
            await manual.ack(event)

    async def flush() -> None:
        """Hand the batch's sends to the producer and go on: the batch lands (sends acked,
        then its table changes, then its events acknowledged) while the next one is handled.
        One batch at most is in the air."""
        nonlocal pending, handled, landing
        if failed is not None:
            raise failed
        batch, pending, handled = pending, [], 0
        if not batch:
            return
        before = landing
        landing = asyncio.ensure_future(land(await outbox.launch(), before, batch))
        if before is not None:
            await before

    async def landed() -> None:
        """Everything handed off so far has landed."""
        nonlocal landing
        if landing is not None:
            last, landing = landing, None
            await last

    async def flush_when_quiet() -> None:
        nonlocal failed
        next_chores = time.monotonic() + every
        try:
            while True:
                await asyncio.sleep(BATCH_WITHIN)
                if landing is not None and not landing.done():
                    # The last batch is still landing: the agent goes on handling events
                    # meanwhile, and they go out together as soon as it has landed.
                    await asyncio.wait([landing])
                async with lock:
                    await flush()
                    if housekeeping is not None and time.monotonic() >= next_chores:
                        await landed()
                        started = time.monotonic()
                        try:
                            await housekeeping(outbox)
                            await outbox.flush()
                        except (KafkaError, OSError, TimeoutError) as exc:  # the broker is away
                            log.warning("%s housekeeping failed: %s; trying again", what, exc)
                        except Exception:  # a bug: the next round tries again; never stop the loop
                            log.exception("%s housekeeping failed", what)
                        finished = time.monotonic()
                        chores.observe(finished - started)
                        next_chores = finished + every
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a batch did not land: the agent's loop raises it
            failed = failed or exc

    async def one(message: Any) -> None:
        try:
            msg = message.message
            with logs.bound(correlation_id=header(message, CORRELATION_HEADER)):
                if tracing.enabled():
                    with tracing.span(what, "consumer", attributes={
                        "messaging.system": "kafka", "messaging.destination.name": msg.topic,
                        "messaging.destination.partition.id": str(msg.partition),
                        "messaging.kafka.offset": msg.offset,
                    }):
                        await handle(message, outbox)
                else:
                    await handle(message, outbox)
        except Exception:
            # A bug must not wedge the partition forever; the message is parked with why.
            log.exception("%s failed on %s", what, message.message.tp)
            await bus.dead_letter(message, f"internal error in the {what}", kind="internal_error")

    quiet = asyncio.ensure_future(flush_when_quiet())
    try:
        async for event in manual.events():
            async with lock:
                if failed is not None:
                    raise failed
                try:
                    messages = unpack(event)
                except records.BadRecord as exc:
                    messages = []
                    await bus.dead_letter(event, str(exc), kind="bad_record")
                for message in messages:
                    await one(message)
                pending.append(event)
                handled += len(messages)
                if handled >= BATCH_SIZE:
                    await flush()
    finally:
        quiet.cancel()
        # Stopping (a graceful shutdown cancels the agent): the events handled so far are
        # sent and acknowledged now, or the consumer waits for them until it is killed and
        # the group cannot move this worker's partitions meanwhile.
        try:
            async with asyncio.timeout(5):
                async with lock:
                    await flush()
                    await landed()
        except Exception as exc:  # noqa: BLE001 - they are redelivered to the next owner
            log.warning("%s: %d handled event(s) not acknowledged at stop: %r", what, len(pending), exc)


async def dead_letter(event: Any, reason: str, *, kind: str, send: DeadLetterSend) -> None:
    """Park a message that cannot be processed, with why and where it came from.

    `kind` is a fixed class of the reason (bad_record, invalid_order, wrong_key, ...) for
    metrics and alerts; `reason` is the words for people; `send` takes the dead letter to
    Kafka (the worker's producer, or the projection process's own)."""
    msg = event.message
    if isinstance(event.value, bytes):
        raw = event.value
    elif isinstance(event, Item):
        raw = orjson.dumps(event.value)
    else:
        raw = str(event.value).encode()
    key = event.key if isinstance(event.key, bytes) else (str(event.key).encode() if event.key is not None else None)
    details: dict[str, Any] = {
        "partition": msg.partition,
        "offset": msg.offset,
        "key": key.decode("utf-8", "replace") if key else None,
        "value": raw.decode("utf-8", "replace"),
    }
    where = [("source-partition", str(msg.partition).encode()), ("source-offset", str(msg.offset).encode())]
    if isinstance(msg, ItemWhere):  # one message of a batch record: which one
        details["item"] = msg.index
        where.append(("source-item", str(msg.index).encode()))
    correlation = header(event, CORRELATION_HEADER)
    value, headers = records.dead_letter(reason, kind, msg.topic, now().iso, details, where, correlation)
    metrics.DEAD_LETTERS.labels(kind, msg.topic).inc()
    log.warning(
        "dead-lettered %s[%d]@%d (%s): %s", msg.topic, msg.partition, msg.offset, kind, reason,
        extra={"correlation_id": correlation, "reason_class": kind},
    )
    await send(key, value, headers)


def key_text(event: Any) -> str:
    key = event.key
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    return "" if key is None else str(key)
