"""Live updates for WebSocket clients: a fan-out hub and the Kafka feed that drives it.

`Hub` is pure asyncio. It indexes connections by user id (admins also in an admin set) and
gives every connection a bounded send queue drained by that connection's own writer task.
Publishing only ever calls `put_nowait`, so fan-out never waits for a socket: a client whose
queue is full, or whose send takes longer than the send timeout, is dropped (closed with
1013) and everyone else carries on.

`LiveFeed` is one group-less `AIOKafkaConsumer` per worker process, assigned every partition
of `order-status`, `stock-levels` and `worker-status` and starting at their end, so each
replica sees every change whichever replica owns the order or SKU. Records of one partition
are handed to the hub in offset order, which keeps each order's statuses (and each SKU's
levels) in order.

The ops console subscribes a connection to the console feed (`Hub.subscribe_console`): it
then gets every order's status and every stock level, gathered for 0.2 s into one
`console.updates` message (the latest change of each order and SKU, at most 200), so a
console costs the same few messages a second in a flash sale as at rest and is never dropped
as too slow; low-stock alerts as they come; and from `Console`, once a second while any
console connection is open, `console.stats` (services/console_stats.py) and
`console.workers` (the workers' heartbeats on `worker-status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from .. import internals, metrics, records
from .. import topics as t
from ..domain import events as e
from ..domain.retry import Backoff
from ..services.console_stats import ConsoleStats, Workers

log = logging.getLogger("orion.live")

CONNECTIONS = metrics.WS_CONNECTIONS
MESSAGES = metrics.WS_MESSAGES
DROPPED = metrics.WS_DROPPED
FEED_PARTITIONS = metrics.LIVE_FEED_PARTITIONS

# Close codes: 1001 going away, 1011 server error, 1013 try again later, 4401 unauthorised.
GOING_AWAY = 1001
SERVER_ERROR = 1011
TRY_AGAIN_LATER = 1013
UNAUTHORIZED = 4401

OPEN_STATUSES_EXCLUDED = frozenset({"FULFILLED", "REJECTED", "PAYMENT_FAILED", "CANCELLED"})


class Socket(Protocol):
    """What the hub needs of a client socket (aiohttp's WebSocketResponse behind an adapter)."""

    async def send_str(self, data: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


Message = Mapping[str, Any]
_Item = tuple[str, str]  # (message type, JSON text)


def _item(message: Message) -> _Item:
    return str(message.get("type", "unknown")), json.dumps(message, separators=(",", ":"))


class Connection:
    """One client socket: who it is, its bounded send queue and its writer task."""

    _ids = itertools.count(1)

    def __init__(self, hub: Hub, user_id: str, admin: bool, socket: Socket) -> None:
        self.id = next(self._ids)
        self.hub = hub
        self.user_id = user_id
        self.admin = admin
        self.socket = socket
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=hub.queue_size)
        self.closed = False
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.sent = 0
        self._gone = asyncio.Event()  # set once the hub lets go of this connection
        self._writer: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Connection #{self.id} user={self.user_id!r}{' admin' if self.admin else ''}>"

    def offer(self, item: _Item) -> bool:
        """Queue without waiting; a full queue drops this connection (it cannot keep up)."""
        if self.closed:
            return False
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.hub.drop(self, "slow", TRY_AGAIN_LATER, "too slow: send queue full")
            return False
        return True

    async def send(self, message: Message) -> bool:
        """Queue a reply to this client's own request (hello, pong, sync): this may wait for
        room, but no longer than the send timeout, after which the client counts as slow."""
        if self.closed:
            return False
        put = asyncio.ensure_future(self.queue.put(_item(message)))
        gone = asyncio.ensure_future(self._gone.wait())
        try:
            done, _ = await asyncio.wait(
                {put, gone}, timeout=self.hub.send_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in (put, gone):
                waiter.cancel()
        if put in done:
            return not self.closed
        if gone not in done:  # no room within the send timeout
            self.hub.drop(self, "slow", TRY_AGAIN_LATER, "too slow: send queue full")
        return False

    async def join(self) -> None:
        """Wait until everything queued so far was written (tests and diagnostics)."""
        await self.queue.join()

    def _start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name=f"ws-writer-{self.id}")

    async def _write(self) -> None:
        while True:
            kind, text = await self.queue.get()
            try:
                # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that comes just as
                # the send completes, and the hub, stopping this writer, would wait for ever.
                async with asyncio.timeout(self.hub.send_timeout):
                    await self.socket.send_str(text)
            except TimeoutError:
                self.hub.drop(self, "slow", TRY_AGAIN_LATER, "too slow: send timed out")
                return
            except Exception as exc:  # connection reset, closing transport: this client is gone
                log.debug("send to %r failed: %s", self, exc)
                self.hub.drop(self, "error", SERVER_ERROR, "send failed")
                return
            finally:
                self.queue.task_done()
            self.sent += 1
            MESSAGES.labels(kind).inc()


class Hub:
    """Connections by user id (and the admins among them); fan-out that never waits."""

    def __init__(
        self, queue_size: int = 256, send_timeout: float = 10.0, close_timeout: float = 5.0
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.queue_size = queue_size
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self._by_user: dict[str, set[Connection]] = {}
        self._admins: set[Connection] = set()
        self._console: set[Connection] = set()  # subscribed to the console feed
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def count(self) -> int:
        return sum(len(conns) for conns in self._by_user.values())

    @property
    def idle(self) -> bool:
        return not self._by_user

    def connections(self, user_id: str) -> frozenset[Connection]:
        return frozenset(self._by_user.get(user_id, ()))

    @property
    def admins(self) -> frozenset[Connection]:
        return frozenset(self._admins)

    @property
    def consoles(self) -> frozenset[Connection]:
        return frozenset(self._console)

    @property
    def has_console(self) -> bool:
        return bool(self._console)

    def subscribe_console(self, conn: Connection) -> bool:
        """Send `conn` the console feed from now on (`console.updates` instead of single
        order and stock messages, alerts, the console's own messages); False if it is closed
        already."""
        if conn.closed:
            return False
        self._console.add(conn)
        return True

    def connect(
        self, user_id: str, socket: Socket, *, admin: bool = False, first: Message | None = None
    ) -> Connection:
        """Register a socket; `first` (the hello) is queued before any published message."""
        conn = Connection(self, user_id, admin, socket)
        if first is not None:
            conn.queue.put_nowait(_item(first))
        self._by_user.setdefault(user_id, set()).add(conn)
        if admin:
            self._admins.add(conn)
        CONNECTIONS.inc()
        conn._start()
        return conn

    def publish_order(self, user_id: str, message: Message) -> int:
        """Queue `message` on every connection of `user_id` but those on the console feed
        (they get every order in `console.updates`); returns how many took it."""
        conns = self._by_user.get(user_id)
        if conns and self._console:
            conns = conns - self._console
        return self._fan_out(conns, message) if conns else 0

    def publish_admin(self, message: Message) -> int:
        """Queue a stock level on every admin connection but those on the console feed (they
        get the levels in `console.updates`); returns how many took it."""
        admins = self._admins - self._console if self._console else self._admins
        return self._fan_out(admins, message) if admins else 0

    def publish_alert(self, message: Message) -> int:
        """Queue `message` (a low-stock alert: rare) on every admin and console connection,
        once each; returns how many took it."""
        conns = self._admins | self._console if self._console else self._admins
        return self._fan_out(conns, message) if conns else 0

    def publish_console(self, message: Message) -> int:
        """Queue `message` on every console connection; returns how many took it."""
        return self._fan_out(self._console, message) if self._console else 0

    def _fan_out(self, conns: Iterable[Connection], message: Message) -> int:
        item = _item(message)  # serialised once for everyone
        return sum(conn.offer(item) for conn in list(conns))

    def drop(self, conn: Connection, reason: str | None, code: int, message: str) -> None:
        """Stop sending to `conn` and close its socket with `code` in the background;
        `reason` labels the dropped counter (None for an orderly close such as shutdown)."""
        if conn.closed:
            return
        self._detach(conn, code, message)
        if reason is not None:
            DROPPED.labels(reason).inc()
            log.info("dropped %r (%s): %s", conn, reason, message)
        task = asyncio.create_task(self._close(conn, code, message), name=f"ws-close-{conn.id}")
        conn._closing = task
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def disconnect(self, conn: Connection, dropped: str | None = None) -> None:
        """The client went away (or the handler ended): forget it and stop its writer.
        Waits for a close the hub started, so the close handshake is not cut short."""
        if not conn.closed:
            self._detach(conn, None, None)
            if dropped is not None:
                DROPPED.labels(dropped).inc()
                log.info("dropped %r (%s)", conn, dropped)
        if conn._closing is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(conn._closing), self.close_timeout)
        await self._stop_writer(conn)

    async def close_all(
        self, code: int = GOING_AWAY, message: str = "server shutting down"
    ) -> None:
        """Close every socket (worker shutdown); returns once all closes finished or timed out."""
        conns = [conn for conns in self._by_user.values() for conn in conns]
        for conn in conns:
            self.drop(conn, None, code, message)
        pending = [c._closing for c in conns if c._closing is not None]
        if pending:
            await asyncio.wait(pending, timeout=self.close_timeout + 1)

    def _detach(self, conn: Connection, code: int | None, message: str | None) -> None:
        conn.closed = True
        conn._gone.set()
        conn.close_code, conn.close_reason = code, message
        users = self._by_user.get(conn.user_id)
        if users is not None:
            users.discard(conn)
            if not users:
                del self._by_user[conn.user_id]
        self._admins.discard(conn)
        self._console.discard(conn)
        CONNECTIONS.dec()

    async def _stop_writer(self, conn: Connection) -> None:
        writer = conn._writer
        if writer is None or writer is asyncio.current_task():
            return
        if not writer.done():
            writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer

    async def _close(self, conn: Connection, code: int, message: str) -> None:
        await self._stop_writer(conn)
        try:
            await asyncio.wait_for(conn.socket.close(code, message), self.close_timeout)
        except Exception as exc:  # the client is gone anyway
            log.debug("closing %r: %s", conn, exc)


# Messages, as API.md describes them.


def order_status_message(ev: e.OrderStatusChanged) -> dict[str, Any]:
    return {
        "type": "order.status",
        "order_id": ev.order_id,
        "status": ev.status.value,
        "previous": ev.previous.value if ev.previous is not None else None,
        "version": ev.version,
        "at": ev.at,
        "failure_reason": ev.failure_reason,
        "user_id": ev.user_id,
        "total": ev.total,
        "currency": ev.currency,
        "created_at": ev.created_at,
    }


def order_snapshot_message(order: Mapping[str, Any]) -> dict[str, Any]:
    """An order row from PostgreSQL as an `order.status` message marked as a snapshot."""
    return {
        "type": "order.status",
        "order_id": order["order_id"],
        "status": order["status"],
        "at": order.get("updated_at"),
        "failure_reason": order.get("failure_reason"),
        "snapshot": True,
    }


def inventory_message(ev: e.StockLevelChanged) -> dict[str, Any]:
    return {
        "type": "inventory.level",
        "sku": ev.sku,
        "available": ev.available,
        "low_stock": ev.low_stock,
        "on_hand": ev.on_hand,
        "reserved": ev.reserved,
        "low_stock_threshold": ev.low_stock_threshold,
        "version": ev.version,
        "at": ev.at,
    }


def stock_low_message(ev: e.LowStockDetected) -> dict[str, Any]:
    return {
        "type": "stock.low",
        "sku": ev.sku,
        "available": ev.available,
        "threshold": ev.low_stock_threshold,
        "at": ev.at,
    }


def hello_message(user: str, roles: Iterable[str], expires_at: float | None) -> dict[str, Any]:
    when = None if expires_at is None else records.utc_iso(expires_at)
    return {"type": "hello", "user": user, "roles": sorted(roles), "expires_at": when}


def is_open(status: str) -> bool:
    return status not in OPEN_STATUSES_EXCLUDED


class _Versions:
    """The last version seen per key, bounded: drops redelivered or stale copies of an event
    (Kafka is at least once) without growing for ever."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()

    def fresh(self, kind: str, key: str, version: int | None) -> bool:
        if not version:  # unknown version: always pass on
            return True
        k = (kind, key)
        last = self._seen.get(k)
        if last is not None and version <= last:
            return False
        self._seen[k] = version
        self._seen.move_to_end(k)
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True


# How long changes gather before a `console.updates` goes out (at most five a second per
# console, however many orders change), and the most changes one carries.
FLUSH_AFTER = 0.2
MAX_UPDATES = 200


class Console:
    """The console feed's own messages: the stats of the orders the feed sees and the
    workers' latest heartbeats, sent once every `interval` seconds by a ticker that runs only
    while console connections are open (the first subscription starts it, it ends when the
    last console connection goes)."""

    def __init__(self, hub: Hub, interval: float = 1.0, flush_after: float = FLUSH_AFTER,
                 max_updates: int = MAX_UPDATES) -> None:
        self.hub = hub
        self.interval = interval
        self.stats = ConsoleStats()
        self.workers = Workers()
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None
        # The latest change of each order and SKU since the last `console.updates`.
        self.flush_after, self.max_updates = flush_after, max_updates
        self._orders: OrderedDict[str, Message] = OrderedDict()
        self._stock: OrderedDict[str, Message] = OrderedDict()
        self._dropped = 0
        self._flush: asyncio.TimerHandle | None = None

    def order(self, message: Message) -> None:
        """An order's new status for the console connections, sent with the next batch."""
        self._pend(self._orders, str(message["order_id"]), message)

    def stock(self, message: Message) -> None:
        """A SKU's new level for the console connections, sent with the next batch."""
        self._pend(self._stock, str(message["sku"]), message)

    def _pend(self, pending: OrderedDict[str, Message], key: str, message: Message) -> None:
        pending[key] = message  # a newer change of the same order or SKU replaces the older
        pending.move_to_end(key)
        if len(pending) > self.max_updates:  # more changed than a console can show: keep the newest
            pending.popitem(last=False)
            self._dropped += 1
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self.flush_after, self.flush)

    def flush(self) -> None:
        """Send what changed as one `console.updates` message."""
        self._flush = None
        if not (self._orders or self._stock):
            return
        message = {"type": "console.updates", "orders": list(self._orders.values()),
                   "stock": list(self._stock.values()), "dropped": self._dropped}
        self._orders.clear()
        self._stock.clear()
        self._dropped = 0
        self.hub.publish_console(message)

    @property
    def running(self) -> bool:
        return self._task is not None

    def subscribe(self, conn: Connection, first: Message | None = None) -> bool:
        """Put `conn` on the console feed and make sure the ticker runs; `first` (the answer
        to the client) is queued before anything the feed publishes to it."""
        if first is not None and not conn.offer(_item(first)):
            return False
        if not self.hub.subscribe_console(conn):
            return False
        if self._task is None:
            self.stats.clear()  # an interval starts now, not when the last console left
            self._task = asyncio.create_task(self._tick(), name="ws-console-ticker")
        return True

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        last = due = loop.time()
        try:
            while True:
                due += self.interval
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not self.hub.has_console:
                    return
                now = loop.time()
                if now - due > self.interval:  # the loop was held up: skip the missed ticks
                    due = now
                try:
                    self.send(round(now - last, 3))
                except Exception:  # a bug must not stop the console feed for good
                    log.exception("console feed tick failed")
                last = now
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    def send(self, interval_s: float) -> None:
        """One tick: `console.stats` of the interval that ends now, then `console.workers`."""
        self.ticks += 1
        at = records.utc_iso(time.time(), "milliseconds")
        self.hub.publish_console(self.stats.roll(at, interval_s))
        self.hub.publish_console(self.workers.message(at, time.monotonic()))

    async def stop(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self.flush()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class Dispatcher:
    """Turns raw records of `order-status`, `stock-levels` and `worker-status` into hub
    messages (and the console's stats and view of the workers)."""

    def __init__(self, hub: Hub, console: Console | None = None) -> None:
        self.hub = hub
        self.console = console if console is not None else Console(hub)
        self._versions = _Versions()

    def __call__(self, raw: bytes | None, topic: str | None = None, key: bytes | None = None) -> None:
        if self.hub.idle:
            return
        if topic == t.WORKER_STATUS.name:
            self._worker_status(key, raw)
            return
        try:
            data = records.parse_json(raw) if raw is not None else None
            # The items of a batch record (agents/common.py), or the record's one message.
            values = [v for _, _, v in records.decode_batch(data)] if _is_batch(data) else [data]
        except Exception as exc:  # BadRecord, or anything a bad producer managed to send
            log.debug("live feed ignores a record: %s", exc)
            return
        for value in values:
            try:
                message = records.decode(value)
            except Exception as exc:
                log.debug("live feed ignores a message: %s", exc)
                continue
            self._publish(message)

    def _worker_status(self, key: bytes | None, raw: bytes | None) -> None:
        """A heartbeat (not a domain message: records.decode does not know it) or a tombstone."""
        try:
            value = records.parse_json(raw) if raw is not None else None
            worker = key.decode() if key is not None else None
            self.console.workers.heard(worker, value, time.monotonic(), time.time())
        except Exception as exc:  # bad JSON, a bad key, not a heartbeat
            log.debug("live feed ignores a worker-status record: %s", exc)

    def _publish(self, message: Any) -> None:
        match message:
            case e.OrderStatusChanged():
                if self._versions.fresh("order", message.order_id, message.version):
                    status = order_status_message(message)
                    self.hub.publish_order(message.user_id, status)
                    if self.hub.has_console:
                        self.console.order(status)
                        previous = message.previous.value if message.previous is not None else None
                        self.console.stats.observe(message.status.value, previous, message.created_at, message.at)
            case e.StockLevelChanged():
                if self._versions.fresh("stock", message.sku, message.version):
                    level = inventory_message(message)
                    self.hub.publish_admin(level)
                    if self.hub.has_console:
                        self.console.stock(level)
            case e.LowStockDetected():
                version = getattr(message, "version", None)
                if self._versions.fresh("low", message.sku, version):
                    self.hub.publish_alert(stock_low_message(message))
            case _:
                pass


def _is_batch(data: Any) -> bool:
    return isinstance(data, dict) and data.get("type") == "Batch"


class TopicMissing(RuntimeError):
    """A topic the feed reads does not exist (yet)."""


ConsumerFactory = Callable[..., AIOKafkaConsumer]
# What the feed hands each record to: its value, topic and key.
Dispatch = Callable[[bytes | None, str, bytes | None], None]


class LiveFeed:
    """This worker's own reader of every partition of the live topics; never crashes,
    retries with backoff while Kafka is away, resumes where it was after a reconnect."""

    def __init__(
        self,
        bootstrap: str,
        dispatch: Dispatch,
        topics: Sequence[str] = (t.ORDER_STATUS.name, t.STOCK_LEVELS.name, t.WORKER_STATUS.name),
        *,
        optional: Iterable[str] = (t.WORKER_STATUS.name,),
        client_id: str = "orion-live",
        refresh_every: float = 30.0,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        consumer_factory: ConsumerFactory = AIOKafkaConsumer,
        idle: Callable[[], bool] = lambda: False,
        lookback: float = 2.0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.options = dict(options or {})  # how to connect (kafka_auth.client_options)
        self.idle = idle
        self.lookback = lookback
        self.bootstrap = bootstrap
        self.dispatch = dispatch
        self.topics = tuple(topics)
        self.optional = frozenset(optional)  # read once they exist; the feed goes on without them
        self.client_id = client_id
        self.refresh_every = refresh_every
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.consumer_factory = consumer_factory
        self.positions: dict[TopicPartition, int] = {}
        self.assigned: frozenset[TopicPartition] = frozenset()
        self.positioned = asyncio.Event()

    async def run(self) -> None:
        """Consume until cancelled; every failure is logged and retried with backoff."""
        backoff = Backoff(self.initial_backoff, self.max_backoff)
        while True:
            consumer = self.consumer_factory(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="latest",
                client_id=self.client_id,
                **self.options,
            )
            try:
                await consumer.start()
                await self._assign(consumer)
                backoff.reset()
                await self._consume(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Kafka away, topics missing, metadata errors: retry
                log.warning("live feed: %r; retrying", exc)
            finally:
                self.positioned.clear()
                self.assigned = frozenset()
                FEED_PARTITIONS.set(0)
                with contextlib.suppress(Exception):
                    await asyncio.shield(consumer.stop())
            await asyncio.sleep(backoff.next())  # backoff before reconnecting

    async def _rewind(self, consumer: AIOKafkaConsumer) -> None:
        since = int((time.time() - self.lookback) * 1000)
        found = await consumer.offsets_for_times({tp: since for tp in self.assigned})
        ends = await consumer.end_offsets(list(self.assigned))
        for tp in self.assigned:
            hit = found.get(tp)
            offset = hit.offset if hit is not None else ends[tp]
            consumer.seek(tp, offset)
            self.positions[tp] = offset

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        cluster = await internals.cluster_metadata(consumer)
        tps: list[TopicPartition] = []
        for topic in self.topics:
            partitions = cluster.partitions_for_topic(topic)
            if not partitions:
                if topic in self.optional:  # e.g. worker-status before `orion topics` made it
                    log.debug("live feed: topic %s does not exist yet", topic)
                    continue
                raise TopicMissing(f"topic {topic} does not exist yet")
            tps.extend(TopicPartition(topic, p) for p in sorted(partitions))
        return tps

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        """Assign every partition: known ones resume at their position, partitions new since
        the first assignment start at their beginning (those of an optional topic at their
        end), the rest (first start) at the end."""
        tps = await self._partitions(consumer)
        first = not self.positions
        consumer.assign(tps)
        at_end = []
        for tp in tps:
            if tp in self.positions:
                consumer.seek(tp, self.positions[tp])
            elif first or tp.topic in self.optional:  # (old heartbeats are of no use)
                at_end.append(tp)
            else:
                consumer.seek(tp, 0)
        if at_end:
            await consumer.seek_to_end(*at_end)
        for tp in tps:
            self.positions[tp] = await consumer.position(tp)
        self.assigned = frozenset(tps)
        FEED_PARTITIONS.set(len(tps))
        self.positioned.set()
        log.info("live feed reading %d partitions of %s", len(tps), ", ".join(sorted({tp.topic for tp in tps})))

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        next_refresh = time.monotonic() + self.refresh_every
        paused = False
        while True:
            # Nobody connected: fetch nothing (fetching costs the pipeline's CPU). The first
            # client makes the feed go back `lookback` seconds by record time, so an update
            # published while it was connecting is not missed (the dispatcher drops repeats).
            if self.idle():
                if not paused:
                    consumer.pause(*self.assigned)
                    paused = True
                await asyncio.sleep(0.1)  # poll for the first client
                continue
            if paused:
                await self._rewind(consumer)
                consumer.resume(*self.assigned)
                paused = False
            batch = await consumer.getmany(timeout_ms=1000, max_records=1000)
            for tp, msgs in batch.items():
                for msg in msgs:
                    try:
                        self.dispatch(msg.value, tp.topic, msg.key)
                    except Exception:  # a bug must not stop the feed on one record
                        log.exception("live feed could not dispatch %s@%d", tp, msg.offset)
                if msgs:
                    self.positions[tp] = msgs[-1].offset + 1
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + self.refresh_every
                if set(await self._partitions(consumer)) != self.assigned:
                    for tp in self.assigned:
                        self.positions[tp] = await consumer.position(tp)
                    await self._assign(consumer)
