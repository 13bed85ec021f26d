"""The live-update hub, the record dispatcher and the Kafka feed loop, with fake sockets and a
fake consumer (no network). Waits are on conditions with deadlines, never fixed sleeps."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from prometheus_client import REGISTRY

from orion_streams import records
from orion_streams.adapters import live
from orion_streams.adapters.live import Dispatcher, Hub, LiveFeed
from orion_streams.domain import events as e
from orion_streams.domain.orders import OrderStatus

AT = "2024-05-01T12:00:00Z"
DEADLINE = 2.0


class FakeSocket:
    """Records what is sent; `blocked` sockets never finish a send, `broken` ones raise."""

    def __init__(self, *, blocked: bool = False, broken: bool = False) -> None:
        self.messages: list[dict[str, Any]] = []
        self.broken = broken
        self.gate = asyncio.Event()
        if not blocked:
            self.gate.set()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.arrived = asyncio.Event()

    async def send_str(self, data: str) -> None:
        if self.broken:
            raise ConnectionResetError("peer went away")
        await self.gate.wait()
        self.messages.append(json.loads(data))
        self.arrived.set()

    async def close(self, code: int, reason: str) -> None:
        self.close_code, self.close_reason = code, reason
        self.closed.set()

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def flushed(*conns: live.Connection) -> None:
    await asyncio.wait_for(asyncio.gather(*(c.join() for c in conns)), DEADLINE)


async def closed(sock: FakeSocket) -> None:
    await asyncio.wait_for(sock.closed.wait(), DEADLINE)


def status_changed(
    order_id: str, user_id: str, status: OrderStatus, version: int
) -> e.OrderStatusChanged:
    return e.OrderStatusChanged(
        order_id=order_id,
        user_id=user_id,
        email="ada@example.com",
        status=status,
        previous=None if status is OrderStatus.PENDING else OrderStatus.PENDING,
        lines=(e.OrderLineView("A", 1, 1_000),),
        total=1_000,
        currency="EUR",
        failure_reason=None,
        version=version,
        created_at=AT,
        at=AT,
    )


async def test_order_messages_reach_every_connection_of_the_user_and_no_one_else() -> None:
    hub = Hub(queue_size=8)
    phone, laptop, other, admin = FakeSocket(), FakeSocket(), FakeSocket(), FakeSocket()
    conns = [
        hub.connect("ada", phone),
        hub.connect("ada", laptop),
        hub.connect("bob", other),
        hub.connect("mike", admin, admin=True),
    ]
    assert (
        hub.publish_order("ada", {"type": "order.status", "order_id": "o1", "status": "PENDING"})
        == 2
    )
    assert (
        hub.publish_order("ada", {"type": "order.status", "order_id": "o1", "status": "RESERVED"})
        == 2
    )
    assert hub.publish_order("nobody", {"type": "order.status", "order_id": "o9"}) == 0
    await flushed(*conns)
    for sock in (phone, laptop):
        assert [m["status"] for m in sock.messages] == ["PENDING", "RESERVED"]
    assert other.messages == [] and admin.messages == []
    assert metric("orion_websocket_messages_total", type="order.status") >= 4


async def test_admin_messages_reach_only_admins() -> None:
    hub = Hub(queue_size=8)
    customer, admin1, admin2 = FakeSocket(), FakeSocket(), FakeSocket()
    conns = [
        hub.connect("ada", customer),
        hub.connect("mike", admin1, admin=True),
        hub.connect("eve", admin2, admin=True),
    ]
    assert hub.publish_admin({"type": "inventory.level", "sku": "A", "available": 3}) == 2
    await flushed(*conns)
    assert customer.messages == []
    assert (
        admin1.messages
        == admin2.messages
        == [{"type": "inventory.level", "sku": "A", "available": 3}]
    )
    # An admin is a user too: their own orders still reach them.
    hub.publish_order("mike", {"type": "order.status", "order_id": "o2"})
    await flushed(*conns)
    assert admin1.types() == ["inventory.level", "order.status"] and admin2.types() == [
        "inventory.level"
    ]


async def test_the_first_message_comes_before_anything_published() -> None:
    hub = Hub(queue_size=4)
    sock = FakeSocket()
    conn = hub.connect("ada", sock, first={"type": "hello", "user": "ada"})
    hub.publish_order("ada", {"type": "order.status", "order_id": "o1"})
    await flushed(conn)
    assert sock.types() == ["hello", "order.status"]


async def test_a_full_queue_drops_only_that_connection() -> None:
    hub = Hub(queue_size=2)
    slow, fast, other = FakeSocket(blocked=True), FakeSocket(), FakeSocket()
    slow_conn = hub.connect("ada", slow)
    fast_conn = hub.connect("ada", fast)
    other_conn = hub.connect("mike", other, admin=True)
    before = metric("orion_websocket_dropped_total", reason="slow")
    hub.publish_order("ada", {"type": "order.status", "order_id": "o0"})
    hub.publish_order("ada", {"type": "order.status", "order_id": "o1"})
    await flushed(fast_conn)
    # The slow writer holds o0 on the socket and o1 waits in its queue (size 2): o2 fits, o3 not.
    assert not slow_conn.closed
    hub.publish_order("ada", {"type": "order.status", "order_id": "o2"})
    assert not slow_conn.closed
    hub.publish_order("ada", {"type": "order.status", "order_id": "o3"})
    await closed(slow)
    assert slow.close_code == live.TRY_AGAIN_LATER and "too slow" in (slow.close_reason or "")
    assert slow_conn.closed and slow_conn not in hub.connections("ada")
    assert metric("orion_websocket_dropped_total", reason="slow") == before + 1
    # Everyone else keeps receiving, and publishing never waited for the blocked socket.
    for n in range(4, 6):
        hub.publish_order("ada", {"type": "order.status", "order_id": f"o{n}"})
    hub.publish_admin({"type": "inventory.level", "sku": "A"})
    await flushed(fast_conn, other_conn)
    assert [m["order_id"] for m in fast.messages] == [f"o{n}" for n in range(6)]
    assert other.types() == ["inventory.level"]
    await hub.disconnect(slow_conn)


async def test_a_send_that_takes_too_long_drops_the_client() -> None:
    hub = Hub(queue_size=8, send_timeout=0.05)
    stuck = FakeSocket(blocked=True)
    conn = hub.connect("ada", stuck)
    before = metric("orion_websocket_dropped_total", reason="slow")
    hub.publish_order("ada", {"type": "order.status", "order_id": "o1"})
    await closed(stuck)
    assert conn.closed and stuck.close_code == live.TRY_AGAIN_LATER
    assert metric("orion_websocket_dropped_total", reason="slow") == before + 1
    assert hub.connections("ada") == frozenset()


async def test_a_failing_send_drops_the_client_as_an_error() -> None:
    hub = Hub(queue_size=8)
    broken = FakeSocket(broken=True)
    conn = hub.connect("ada", broken)
    before = metric("orion_websocket_dropped_total", reason="error")
    hub.publish_order("ada", {"type": "order.status", "order_id": "o1"})
    await closed(broken)
    assert conn.closed and broken.close_code == live.SERVER_ERROR
    assert metric("orion_websocket_dropped_total", reason="error") == before + 1


async def test_a_reply_waits_for_room_but_not_for_ever() -> None:
    hub = Hub(queue_size=1, send_timeout=0.05)
    stuck = FakeSocket(blocked=True)
    conn = hub.connect("ada", stuck)
    assert await conn.send({"type": "pong"})  # the writer takes it and blocks on the socket
    assert await conn.send({"type": "pong"})  # queued: the one free slot
    assert not await conn.send({"type": "pong"})  # no room within the send timeout
    await closed(stuck)
    assert conn.closed


async def test_a_waiting_reply_gives_up_when_the_connection_is_closed() -> None:
    hub = Hub(queue_size=1, send_timeout=60)
    stuck = FakeSocket(blocked=True)
    conn = hub.connect("ada", stuck)
    assert await conn.send({"type": "pong"})
    assert await conn.send({"type": "pong"})
    waiting = asyncio.create_task(conn.send({"type": "pong"}))
    await asyncio.wait_for(hub.close_all(), DEADLINE)  # shutdown does not wait for the reply
    assert await asyncio.wait_for(waiting, DEADLINE) is False
    assert stuck.close_code == live.GOING_AWAY


async def test_disconnect_unregisters_and_the_gauge_follows() -> None:
    hub = Hub(queue_size=4)
    start = metric("orion_websocket_connections")
    socks = [FakeSocket() for _ in range(3)]
    conns = [
        hub.connect("ada", socks[0]),
        hub.connect("ada", socks[1]),
        hub.connect("mike", socks[2], admin=True),
    ]
    assert metric("orion_websocket_connections") == start + 3
    assert hub.count == 3 and len(hub.admins) == 1
    await hub.disconnect(conns[0])
    await hub.disconnect(conns[0])  # twice changes nothing
    assert metric("orion_websocket_connections") == start + 2
    hub.publish_order("ada", {"type": "order.status", "order_id": "o1"})
    await flushed(conns[1])
    assert socks[0].messages == [] and len(socks[1].messages) == 1
    assert not socks[0].closed.is_set()  # the client closed it; the hub does not close again
    await hub.disconnect(conns[2])
    assert hub.admins == frozenset() and hub.publish_admin({"type": "x"}) == 0
    await hub.disconnect(conns[1])
    assert hub.idle and metric("orion_websocket_connections") == start


async def test_drop_then_disconnect_counts_once() -> None:
    hub = Hub(queue_size=4)
    start = metric("orion_websocket_connections")
    before = metric("orion_websocket_dropped_total", reason="expired")
    sock = FakeSocket()
    conn = hub.connect("ada", sock)
    hub.drop(conn, "expired", live.UNAUTHORIZED, "token expired")
    hub.drop(conn, "expired", live.UNAUTHORIZED, "token expired")
    await hub.disconnect(conn, "heartbeat")  # the handler ends after the close
    assert sock.close_code == live.UNAUTHORIZED and sock.close_reason == "token expired"
    assert metric("orion_websocket_dropped_total", reason="expired") == before + 1
    assert metric("orion_websocket_connections") == start


async def test_close_all_closes_every_socket_with_going_away() -> None:
    hub = Hub(queue_size=4)
    start = metric("orion_websocket_connections")
    socks = [FakeSocket(), FakeSocket(blocked=True), FakeSocket()]
    hub.connect("ada", socks[0])
    hub.connect("ada", socks[1], first={"type": "hello"})
    hub.connect("mike", socks[2], admin=True)
    await asyncio.wait_for(hub.close_all(), DEADLINE)
    assert [s.close_code for s in socks] == [live.GOING_AWAY] * 3
    assert hub.idle and metric("orion_websocket_connections") == start


# The dispatcher: Kafka records -> hub messages.


def level(
    sku: str, on_hand: int, reserved: int, version: int, threshold: int = 5
) -> e.StockLevelChanged:
    return e.StockLevelChanged(sku, on_hand, reserved, threshold, version, AT)


async def test_dispatcher_reads_every_item_of_a_batch_record() -> None:
    hub = Hub(queue_size=32)
    ada, admin = FakeSocket(), FakeSocket()
    conns = [hub.connect("ada", ada), hub.connect("mike", admin, admin=True)]
    dispatch = Dispatcher(hub)
    pending = status_changed("o1", "ada", OrderStatus.PENDING, 1)
    reserved = status_changed("o1", "ada", OrderStatus.RESERVED, 2)
    dispatch(records.encode_batch([
        ("o1", records.encode(pending), []),
        ("o1", b'{"type": "OrderStatusChanged"}', []),  # a bad item is skipped, not the rest
        ("o1", records.encode(reserved), []),
    ]))
    dispatch(records.encode_batch([("A", records.encode(level("A", 10, 6, 3)), [])]))
    dispatch(b'{"type": "Batch", "items": 3}')
    await flushed(*conns)
    assert [m["status"] for m in ada.messages] == ["PENDING", "RESERVED"]
    assert [m["type"] for m in admin.messages] == ["inventory.level"]


async def test_dispatcher_routes_records_and_drops_duplicates_and_bad_ones() -> None:
    hub = Hub(queue_size=32)
    ada, bob, admin = FakeSocket(), FakeSocket(), FakeSocket()
    conns = [
        hub.connect("ada", ada),
        hub.connect("bob", bob),
        hub.connect("mike", admin, admin=True),
    ]
    dispatch = Dispatcher(hub)
    pending = status_changed("o1", "ada", OrderStatus.PENDING, 1)
    reserved = status_changed("o1", "ada", OrderStatus.RESERVED, 2)
    for raw in [
        records.encode(pending),
        records.encode(reserved),
        records.encode(pending),  # redelivered: stale version
        records.encode(level("A", 10, 6, 3)),
        records.encode(e.LowStockDetected("A", 4, 5, AT)),
        records.encode(e.StockAdjusted("A", "adj", 1, "restock", 10, 0)),  # not for clients
        b"not json",
        b'{"type": "OrderStatusChanged"}',
        None,
    ]:
        dispatch(raw)
    await flushed(*conns)
    assert ada.messages == [
        {
            "type": "order.status",
            "order_id": "o1",
            "status": "PENDING",
            "previous": None,
            "version": 1,
            "at": AT,
            "failure_reason": None,
            "user_id": "ada",
            "total": 1_000,
            "currency": "EUR",
            "created_at": AT,
        },
        {
            "type": "order.status",
            "order_id": "o1",
            "status": "RESERVED",
            "previous": "PENDING",
            "version": 2,
            "at": AT,
            "failure_reason": None,
            "user_id": "ada",
            "total": 1_000,
            "currency": "EUR",
            "created_at": AT,
        },
    ]
    assert bob.messages == []
    assert admin.messages == [
        {
            "type": "inventory.level",
            "sku": "A",
            "available": 4,
            "low_stock": True,
            "on_hand": 10,
            "reserved": 6,
            "low_stock_threshold": 5,
            "version": 3,
            "at": AT,
        },
        {"type": "stock.low", "sku": "A", "available": 4, "threshold": 5, "at": AT},
    ]


async def test_the_feed_reads_every_partition_in_order_and_survives_kafka_going_away() -> None:
    tps = [TopicPartition(topic, p) for topic in ("order-status", "stock-levels") for p in (0, 1)]
    first = FakeConsumer(start_error=KafkaConnectionError("broker away"))
    second = FakeConsumer(end=5)
    third = FakeConsumer(end=99)
    made = iter([first, second, third])
    seen: list[bytes | None] = []
    feed = LiveFeed(
        "kafka:9092", lambda value, topic, key: seen.append(value), topics=("order-status", "stock-levels"),
        consumer_factory=lambda **kw: next(made), initial_backoff=0.01,
    )
    task = asyncio.create_task(feed.run())
    try:
        await asyncio.wait_for(feed.positioned.wait(), DEADLINE)
        assert second.assigned == tps and second.at_end == tps  # first start: from the end
        assert feed.positions == dict.fromkeys(tps, 5)
        assert metric("orion_live_feed_partitions") == 4
        second.batches.put_nowait(
            {tps[0]: [Record(5, b"a"), Record(6, b"b")], tps[3]: [Record(5, b"c")]}
        )
        second.batches.put_nowait(KafkaConnectionError("connection lost"))
        await asyncio.wait_for(third.assigned_event.wait(), DEADLINE)
        await asyncio.wait_for(feed.positioned.wait(), DEADLINE)
        assert seen == [b"a", b"b", b"c"]
        assert first.stopped and second.stopped
        # After a reconnect every partition resumes where it was, not at the end.
        assert third.at_end == [] and third.seeks == {**dict.fromkeys(tps, 5), tps[0]: 7, tps[3]: 6}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert third.stopped and metric("orion_live_feed_partitions") == 0


class Record:
    def __init__(self, offset: int, value: bytes | None, key: bytes | None = None) -> None:
        self.offset = offset
        self.value = value
        self.key = key


class FakeCluster:
    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1}


class FakeClient:
    async def fetch_all_metadata(self) -> FakeCluster:
        return FakeCluster()


class FakeConsumer:
    """Just enough of AIOKafkaConsumer for LiveFeed."""

    def __init__(self, *, start_error: Exception | None = None, end: int = 0) -> None:
        self.start_error = start_error
        self.end = end
        self._client = FakeClient()
        self.assigned: list[TopicPartition] | None = None
        self.assigned_event = asyncio.Event()
        self.at_end: list[TopicPartition] = []
        self.seeks: dict[TopicPartition, int] = {}
        self.batches: asyncio.Queue[Any] = asyncio.Queue()
        self.stopped = False

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error

    async def stop(self) -> None:
        self.stopped = True

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = list(tps)
        self.assigned_event.set()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        self.at_end.extend(tps)
        for tp in tps:
            self.seeks[tp] = self.end

    async def position(self, tp: TopicPartition) -> int:
        return self.seeks[tp]

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        item = await self.batches.get()
        if isinstance(item, Exception):
            raise item
        return item
