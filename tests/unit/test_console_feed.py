"""The ops console's live feed: the hub's console connections, the dispatcher's handling of
`worker-status`, the once-a-second ticker, and `subscribe` and API keys over `/v1/ws`.
Fake sockets, a fake consumer and an in-process server; every wait has a deadline."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse
from aiokafka import TopicPartition

from orion_streams import records
from orion_streams import topics as t
from orion_streams.adapters.live import Console, Dispatcher, Hub, LiveFeed
from orion_streams.domain import events as e
from orion_streams.domain.orders import OrderStatus
from orion_streams.web.ws import PATH

from .fakes import until
from .test_live_hub import (
    AT,
    DEADLINE,
    FakeCluster,
    FakeConsumer,
    FakeSocket,
    Record,
    flushed,
    level,
    status_changed,
)
from .test_ws_endpoint import close_of, message
from .web_fakes import ALICE, SETTINGS, FakeRuntime, bearer, serve_ws

WS = t.WORKER_STATUS.name


def heartbeat(worker: str, in_flight: int = 3) -> bytes:
    return json.dumps({
        "type": "WorkerStatus", "worker": worker, "at": AT,
        "admission": {"open": True, "reason": None, "in_flight": in_flight, "decisions_per_second": 9.5,
                      "queue_delay_seconds": 0.2, "refused": {"in_flight": 2}},
        "partitions": [{"topic": "orders", "partition": 1, "lag": 4, "role": "active"}],
        "projection": [{"topic": "order-status", "partition": 1, "lag": 0}],
    }).encode()


def orders_of(sock: FakeSocket) -> list[tuple[str, str]]:
    """The order statuses a socket got, single or in `console.updates`, in order."""
    out = []
    for m in sock.messages:
        if m["type"] == "order.status":
            out.append((m["order_id"], m["status"]))
        elif m["type"] == "console.updates":
            out.extend((o["order_id"], o["status"]) for o in m["orders"])
    return out


async def test_a_console_connection_gets_every_order_and_stock_change_once_in_batches() -> None:
    hub = Hub(queue_size=64)
    ada, mike, eve, key = FakeSocket(), FakeSocket(), FakeSocket(), FakeSocket()
    conns = [
        hub.connect("ada", ada),
        hub.connect("mike", mike, admin=True),  # an admin on the console who also orders
        hub.connect("eve", eve, admin=True),  # an admin not on the console
        hub.connect("ak_1", key),  # an API key with the scope ops
    ]
    dispatch = Dispatcher(hub, Console(hub, flush_after=0.01))
    for conn in (conns[1], conns[3]):
        assert dispatch.console.subscribe(conn)
    assert hub.consoles == {conns[1], conns[3]}
    for ev in (
        status_changed("o1", "ada", OrderStatus.PENDING, 1),
        status_changed("o2", "mike", OrderStatus.PENDING, 1),
        status_changed("o1", "ada", OrderStatus.RESERVED, 2),
        level("A", 10, 6, 3),
        e.LowStockDetected("A", 4, 5, AT),
    ):
        dispatch(records.encode(ev), t.ORDER_STATUS.name, None)
    await until(lambda: any(m["type"] == "console.updates" for m in mike.messages), "a batch", DEADLINE)
    await flushed(*conns)
    await dispatch.console.stop()
    # One batch: the latest change of each order (o1's RESERVED replaced its PENDING), the level.
    (batch,) = [m for m in mike.messages if m["type"] == "console.updates"]
    assert [(o["order_id"], o["status"]) for o in batch["orders"]] == [("o2", "PENDING"), ("o1", "RESERVED")]
    assert [lv["sku"] for lv in batch["stock"]] == ["A"] and batch["dropped"] == 0
    assert mike.types() == key.types() == ["stock.low", "console.updates"]
    assert orders_of(ada) == [("o1", "PENDING"), ("o1", "RESERVED")] and orders_of(eve) == []
    assert eve.types() == ["inventory.level", "stock.low"]
    assert ada.types() == ["order.status", "order.status"]
    first = batch["orders"][1]
    assert (first["user_id"], first["total"], first["currency"], first["created_at"]) == ("ada", 1_000, "EUR", AT)


async def test_a_flood_of_changes_is_a_few_bounded_batches() -> None:
    """A flash sale: thousands of changes reach a console as a handful of messages with the
    newest changes, never a queue that overflows and drops the console as too slow."""
    hub = Hub(queue_size=8)
    sock = FakeSocket()
    conn = hub.connect("root", sock, admin=True)
    console = Console(hub, flush_after=0.05, max_updates=100)
    dispatch = Dispatcher(hub, console)
    console.subscribe(conn)
    for i in range(3_000):
        dispatch(records.encode(status_changed(f"o{i}", "ada", OrderStatus.PENDING, 1)), t.ORDER_STATUS.name, None)
    await until(lambda: any(m["type"] == "console.updates" for m in sock.messages), "a batch", DEADLINE)
    await flushed(conn)
    await console.stop()
    assert not conn.closed
    (batch,) = [m for m in sock.messages if m["type"] == "console.updates"]
    assert [o["order_id"] for o in batch["orders"]] == [f"o{i}" for i in range(2_900, 3_000)]
    assert batch["dropped"] == 2_900


async def test_a_closed_connection_leaves_the_console_and_cannot_join_it() -> None:
    hub = Hub()
    conn = hub.connect("root", FakeSocket(), admin=True)
    console = Console(hub)
    assert console.subscribe(conn) and hub.has_console
    await hub.disconnect(conn)
    assert not hub.has_console and not console.subscribe(conn)
    await console.stop()


async def test_the_dispatcher_works_for_console_connections_alone_and_not_for_nobody() -> None:
    hub = Hub()
    dispatch = Dispatcher(hub, Console(hub, flush_after=0.01))
    dispatch(heartbeat("w1"), WS, b"w1")
    dispatch(records.encode(status_changed("o1", "ada", OrderStatus.PENDING, 1)), t.ORDER_STATUS.name, None)
    assert len(dispatch.console.workers) == 0  # nobody connected: nothing is even read
    sock = FakeSocket()
    conn = hub.connect("ak_1", sock)
    dispatch.console.subscribe(conn)
    dispatch(heartbeat("w1"), WS, b"w1")
    dispatch(records.encode(status_changed("o2", "ada", OrderStatus.PENDING, 1)), t.ORDER_STATUS.name, None)
    await until(lambda: bool(orders_of(sock)), "the order in a batch", DEADLINE)
    await flushed(conn)
    await dispatch.console.stop()
    assert orders_of(sock) == [("o2", "PENDING")]
    assert len(dispatch.console.workers) == 1 and dispatch.console.stats.accepted == 1


async def test_the_dispatcher_keeps_heartbeats_and_ignores_bad_worker_status_records() -> None:
    hub = Hub()
    sock = FakeSocket()
    conn = hub.connect("root", sock, admin=True)
    dispatch = Dispatcher(hub)
    dispatch.console.subscribe(conn)
    await dispatch.console.stop()  # no ticks here: the view is read directly
    dispatch(heartbeat("w1"), WS, b"w1")
    dispatch(heartbeat("w2"), WS, b"w2")
    for raw, key in [
        (b"not json", b"w3"),
        (b'{"type": "Batch", "items": []}', b"w3"),  # not a heartbeat
        (records.encode(status_changed("o9", "ada", OrderStatus.PENDING, 1)), b"w3"),
        (heartbeat("w4"), b"w5"),  # the key is another worker's
        (heartbeat("w6"), b"\xff\xfe"),  # a key that is not text
        (None, None),  # a tombstone without a key
    ]:
        dispatch(raw, WS, key)
    dispatch(heartbeat("w1", in_flight=7), WS, b"w1")
    view = dispatch.console.workers.message("now", time.monotonic())
    assert [(w["worker"], w["admission"]["in_flight"]) for w in view["workers"]] == [("w1", 7), ("w2", 3)]
    assert view["workers"][0]["partitions"] == [{"topic": "orders", "partition": 1, "lag": 4, "role": "active"}]
    dispatch(None, WS, b"w2")  # w2 stopped
    dispatch(records.encode(status_changed("o1", "ada", OrderStatus.PENDING, 1)), t.ORDER_STATUS.name, None)
    dispatch.console.flush()  # the batch, now rather than after its 0.2 s
    await flushed(conn)
    assert [w["worker"] for w in dispatch.console.workers.message("now", time.monotonic())["workers"]] == ["w1"]
    assert orders_of(sock) == [("o1", "PENDING")]  # the feed goes on
    await dispatch.console.stop()


async def test_the_ticker_sends_stats_and_workers_only_while_a_console_is_connected() -> None:
    hub = Hub()
    console = Console(hub, interval=0.02)
    dispatch = Dispatcher(hub, console)
    sock, customer = FakeSocket(), FakeSocket()
    viewer, other = hub.connect("root", sock, admin=True), hub.connect("ada", customer)
    dispatch(records.encode(status_changed("o0", "ada", OrderStatus.PENDING, 1)), t.ORDER_STATUS.name, None)
    assert not console.running and console.ticks == 0  # no console yet: no timer at all
    console.subscribe(viewer)
    dispatch(heartbeat("w1"), WS, b"w1")
    dispatch(records.encode(status_changed("o1", "ada", OrderStatus.PENDING, 1)), t.ORDER_STATUS.name, None)
    placed = status_changed("o1", "ada", OrderStatus.CONFIRMED, 2)
    dispatch(records.encode(placed), t.ORDER_STATUS.name, None)
    await until(lambda: "console.workers" in sock.types(), "a tick")
    stats = next(m for m in sock.messages if m["type"] == "console.stats")
    assert stats["accepted"] == 1 and stats["outcomes"]["CONFIRMED"] == 1  # o0 came before: not counted
    assert stats["latency_ms"]["count"] == 1 and 0 < stats["interval_s"] < 1
    workers = next(m for m in sock.messages if m["type"] == "console.workers")
    assert [w["worker"] for w in workers["workers"]] == ["w1"] and workers["workers"][0]["age_s"] < 1
    assert not any(m["type"].startswith("console.") for m in customer.messages)
    await hub.disconnect(viewer)
    await until(lambda: not console.running, "the ticker to end")
    ticks = console.ticks  # nobody on the console: no task, no timer work
    console.subscribe(other)  # (a customer's, as the hub sees it: the session checks who may)
    await until(lambda: console.ticks > ticks, "the ticker to start again")
    await console.stop()
    assert not console.running


async def test_the_feed_reads_worker_status_once_it_exists_and_hands_on_topic_and_key() -> None:
    class NoWorkerStatus(FakeCluster):
        def partitions_for_topic(self, topic: str) -> set[int]:
            return set() if topic == WS else {0, 1}

    consumer = FakeConsumer(end=3)
    consumer._client.fetch_all_metadata = lambda: _async(NoWorkerStatus())  # type: ignore[method-assign]
    seen: list[tuple[bytes | None, str, bytes | None]] = []
    feed = LiveFeed("kafka:9092", lambda *record: seen.append(record), consumer_factory=lambda **kw: consumer)
    assert WS in feed.topics
    task = asyncio.create_task(feed.run())
    try:
        await asyncio.wait_for(feed.positioned.wait(), DEADLINE)
        assert {tp.topic for tp in feed.assigned} == {t.ORDER_STATUS.name, t.STOCK_LEVELS.name}
        consumer.batches.put_nowait({TopicPartition(t.ORDER_STATUS.name, 1): [Record(3, b"a", b"o1")]})
        await until(lambda: bool(seen), "a record")
        assert seen == [(b"a", t.ORDER_STATUS.name, b"o1")]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_worker_status_created_while_the_feed_runs_is_read_from_its_end() -> None:
    class Cluster(FakeCluster):
        made = False

        def partitions_for_topic(self, topic: str) -> set[int]:
            return {0} if topic != WS or self.made else set()

    cluster = Cluster()
    consumer = FakeConsumer(end=7)
    consumer._client.fetch_all_metadata = lambda: _async(cluster)  # type: ignore[method-assign]
    feed = LiveFeed("kafka:9092", lambda *record: None, consumer_factory=lambda **kw: consumer, refresh_every=0.0)
    task = asyncio.create_task(feed.run())
    try:
        await asyncio.wait_for(feed.positioned.wait(), DEADLINE)
        assert len(feed.assigned) == 2
        cluster.made = True
        consumer.batches.put_nowait({})  # one fetch, then the refresh finds the new topic
        status = TopicPartition(WS, 0)
        await until(lambda: status in feed.assigned, "worker-status assigned")
        assert status in consumer.at_end and feed.positions[status] == 7  # not from 0: old heartbeats
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _async(value: Any) -> Any:
    return value


async def test_the_answer_to_subscribe_comes_before_anything_the_feed_publishes() -> None:
    hub = Hub()
    sock = FakeSocket()
    conn = hub.connect("root", sock, admin=True)
    console = Console(hub)
    assert console.subscribe(conn, first={"type": "subscribed", "feed": "console"})
    hub.publish_alert({"type": "stock.low", "sku": "A"})
    await flushed(conn)
    await console.stop()
    assert sock.types() == ["subscribed", "stock.low"]


# Over /v1/ws.


async def subscribe(ws: ClientWebSocketResponse) -> dict[str, Any]:
    hello = await message(ws)
    assert hello["type"] == "hello"
    await ws.send_json({"type": "subscribe", "feed": "console"})
    return await message(ws)


SUBSCRIBED = {"type": "subscribed", "feed": "console"}


async def test_an_admin_token_may_subscribe_to_the_console() -> None:
    async with serve_ws() as (client, endpoint), client.ws_connect(PATH, headers=bearer("root", "admin")) as ws:
        assert await subscribe(ws) == SUBSCRIBED
        assert [c.user_id for c in endpoint.hub.consoles] == ["root"] and endpoint.console.running
        await ws.send_json({"type": "ping"})
        assert await message(ws) == {"type": "pong"}
    await endpoint.console.stop()


@pytest.mark.parametrize("where", ["query", "header"])
async def test_an_api_key_with_the_scope_ops_connects_and_may_subscribe(where: str) -> None:
    runtime = FakeRuntime(SETTINGS)
    key, key_id = runtime.api_keys.grant("console", "ops", "orders:read")
    path, headers = (f"{PATH}?api_key={key}", {}) if where == "query" else (PATH, {"X-API-Key": key})
    async with serve_ws(runtime=runtime) as (client, endpoint), client.ws_connect(path, headers=headers) as ws:
        hello = await message(ws)
        assert hello == {"type": "hello", "user": key_id, "roles": ["service"], "expires_at": None}
        (conn,) = endpoint.hub.connections(key_id)
        assert not conn.admin
        await ws.send_json({"type": "subscribe", "feed": "console"})
        assert await message(ws) == SUBSCRIBED
        assert endpoint.hub.consoles == {conn}
    assert runtime.readied >= 1
    await endpoint.console.stop()


@pytest.mark.parametrize("who", ["key without ops", "customer"])
async def test_others_get_an_error_and_stay_off_the_console(who: str) -> None:
    runtime = FakeRuntime(SETTINGS)
    key, _ = runtime.api_keys.grant("shop", "orders:read", "orders:write")
    headers = {"X-API-Key": key} if who == "key without ops" else bearer(ALICE)
    async with serve_ws(runtime=runtime) as (client, endpoint), client.ws_connect(PATH, headers=headers) as ws:
        refused = await subscribe(ws)
        assert refused["type"] == "error" and "admins and API keys with the scope ops" in refused["detail"]
        assert not endpoint.hub.consoles and not endpoint.console.running
        await ws.send_json({"type": "ping"})
        assert await message(ws) == {"type": "pong"}  # the socket stays


@pytest.mark.parametrize("query", ["?api_key=orion_nope", "?api_key=revoked"])
async def test_a_bad_or_revoked_api_key_is_closed_with_4401(query: str) -> None:
    runtime = FakeRuntime(SETTINGS)
    key, key_id = runtime.api_keys.grant("old", "ops")
    await runtime.api_keys.revoke(key_id)
    path = PATH + query.replace("revoked", key)
    async with serve_ws(runtime=runtime) as (client, endpoint), client.ws_connect(path) as ws:
        code, said, before = await close_of(ws)
    assert (code, before) == (4401, []) and "API key is not valid" in said
    assert endpoint.hub.idle


async def test_an_api_key_that_cannot_be_checked_now_is_closed_with_try_again_later() -> None:
    runtime = FakeRuntime(SETTINGS)
    runtime.ready_error = ConnectionRefusedError("database restarting")
    async with serve_ws(runtime=runtime) as (client, endpoint), client.ws_connect(f"{PATH}?api_key=k") as ws:
        code, said, before = await close_of(ws)
    assert (code, before) == (1013, []) and "try again" in said and "database" not in said
    assert endpoint.hub.idle
