"""`GET /v1/ws` on two real workers: every device of a user sees each of their order's status
changes, in order, whichever worker owns the order; admins see stock levels and one low-stock
alert per crossing; refused and expired tokens close with 4401; `sync` returns open orders;
dead clients are dropped without holding up order processing; shutdown closes with 1001.

Every wait is on a condition with a deadline (a receive loop feeding an asyncio.Condition, or
`eventually` for HTTP polling), never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka.partitioner import murmur2
from prometheus_client.parser import text_string_to_metric_families

from orion_devstack.ports import free_port
from orion_devstack.smtp import MailCatcher
from orion_streams.adapters.kafka_admin import publish_seed_stock
from orion_streams.domain.catalog import DemoStock

from ..integration.harness import PARTITIONS, Api, Services, Worker, eventually

DEADLINE = 45.0
OK = ["PENDING", "RESERVED", "CONFIRMED"]
DECLINED = ["PENDING", "RESERVED", "PAYMENT_FAILED"]
RUSH = 50

Messages = list[dict[str, Any]]


def partition_of(order_id: str) -> int:
    return int(murmur2(order_id.encode()) & 0x7FFFFFFF) % PARTITIONS


def ws_url(worker: Worker) -> str:
    return worker.url.replace("http://", "ws://") + "/v1/ws"


class Client:
    """A WebSocket that reads continuously, keeps every message and the close it got."""

    def __init__(self, name: str, worker: Worker, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.name = name
        self.worker = worker
        self.ws = ws
        self.messages: Messages = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.ended = False
        self.changed = asyncio.Condition()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    message = json.loads(msg.data)
                    async with self.changed:
                        self.messages.append(message)
                        self.changed.notify_all()
                    continue
                if msg.type is aiohttp.WSMsgType.CLOSE:
                    self.close_code, self.close_reason = msg.data, msg.extra
                    continue  # aiohttp answers the close; the next receive says CLOSED
                break
        finally:
            async with self.changed:
                if self.close_code is None:
                    self.close_code = self.ws.close_code
                self.ended = True
                self.changed.notify_all()

    async def wait(
        self, check: Callable[[Messages], Any], what: str, timeout: float = DEADLINE
    ) -> Any:
        """Wait until `check(messages)` is truthy; fail with what was seen after the deadline."""
        result: Any = None

        def done() -> bool:
            nonlocal result
            result = check(self.messages)
            return bool(result) or self.ended

        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(done), timeout)
            except TimeoutError:
                raise AssertionError(
                    f"{self.name}: timed out after {timeout}s waiting for {what}; "
                    f"saw {self.messages[-10:]!r}"
                ) from None
        if not result:
            raise AssertionError(
                f"{self.name}: closed ({self.close_code} {self.close_reason!r}) before {what}; "
                f"saw {self.messages[-10:]!r}"
            )
        return result

    async def closed(self, timeout: float = DEADLINE) -> tuple[int | None, str | None]:
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.ended), timeout)
            except TimeoutError:
                raise AssertionError(f"{self.name} was not closed within {timeout}s") from None
        return self.close_code, self.close_reason

    def of_type(self, kind: str) -> Messages:
        return [m for m in self.messages if m["type"] == kind]

    async def stop(self) -> None:
        if not self.ws.closed:
            await self.ws.close()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def connect(
    session: aiohttp.ClientSession,
    worker: Worker,
    token: str | None,
    name: str,
    *,
    via_query: bool = False,
    sync: bool = False,
) -> Client:
    params: dict[str, str] = {}
    headers: dict[str, str] = {}
    if token is not None and via_query:
        params["token"] = token
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if sync:
        params["sync"] = "1"
    ws = await session.ws_connect(ws_url(worker), headers=headers, params=params)
    return Client(name, worker, ws)


def statuses(messages: Messages, order_id: str) -> list[str]:
    return [
        m["status"]
        for m in messages
        if m["type"] == "order.status" and m["order_id"] == order_id and not m.get("snapshot")
    ]


def has_all(expected: dict[str, list[str]]) -> Callable[[Messages], bool]:
    return lambda ms: all(len(statuses(ms, oid)) >= len(seq) for oid, seq in expected.items())


def level_of(sku: str, available: int) -> Callable[[Messages], bool]:
    return lambda ms: any(
        m["type"] == "inventory.level" and m["sku"] == sku and m["available"] == available
        for m in ms
    )


async def metrics(
    session: aiohttp.ClientSession, worker: Worker
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with session.get(f"{worker.url}/metrics") as resp:
        text = await resp.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def metric_sum(session: aiohttp.ClientSession, worker: Worker, name: str) -> float:
    return sum(v for (n, _), v in (await metrics(session, worker)).items() if n == name)


async def raw_dead_client(worker: Worker, token: str) -> socket.socket:
    """A TCP client that does the upgrade handshake by hand, then never reads (nor answers
    pings) again; a tiny receive buffer so the server's writes back up quickly."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", worker.port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /v1/ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{worker.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), 10)
            assert chunk, f"connection closed during the handshake: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
    except BaseException:
        sock.close()
        raise
    return sock


async def place(api: Api, token: str, sku: str, quantity: int = 1, payment: str = "tok_ok") -> str:
    status, body, _ = await api.place(token, [{"sku": sku, "quantity": quantity}], payment)
    assert status == 202, body
    return str(body["order_id"])


@dataclass
class Stack:
    """Two workers, an HTTP session, tokens, and every socket the test opened."""

    services: Services
    session: aiohttp.ClientSession
    a: Worker
    b: Worker
    clients: list[Client] = field(default_factory=list)
    dead: list[socket.socket] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.admin = self.services.token("mike", ("admin",))
        self.alice = self.services.token("alice")
        self.bob = self.services.token("bob")
        self.api_a = Api(self.a.url, self.session)
        self.api_b = Api(self.b.url, self.session)

    def api(self, i: int) -> Api:
        return (self.api_a, self.api_b)[i % 2]

    async def client(self, worker: Worker, token: str | None, name: str, **kw: bool) -> Client:
        client = await connect(self.session, worker, token, name, **kw)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for sock in self.dead:
            sock.close()
        await asyncio.gather(*(c.stop() for c in self.clients), return_exceptions=True)


async def test_live_updates_on_every_device_from_both_workers(
    fresh_services: Services, tmp_path: Path
) -> None:
    catcher = MailCatcher(tmp_path / "mail", port=free_port())
    catcher.start()
    env = {"ORION_WS_HEARTBEAT": "1", "ORION_SMTP_URL": f"smtp://{catcher.host}:{catcher.port}"}
    workers: list[Worker] = []
    try:
        for name in ("a", "b"):
            worker = Worker(fresh_services, name, env)
            workers.append(worker)
            worker.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            stack = Stack(fresh_services, session, workers[0], workers[1])
            try:
                await _scenario(stack)
            finally:
                await stack.close()
    except BaseException:
        for worker in workers:
            print(f"--- worker {worker.name} ---\n{worker.tail(120)}")
        raise
    finally:
        for worker in reversed(workers):
            worker.stop()
        catcher.stop()


async def _scenario(s: Stack) -> None:
    # Each worker's feed is assigned and positioned on every partition of both topics.
    for w in (s.a, s.b):
        await eventually(partial(_feed_ready, s.session, w), 60, f"worker {w.name}'s live feed")

    # A plain GET is told to upgrade (problem+json through the usual middleware).
    status, body, headers = await s.api_a.call("GET", "/v1/ws", s.alice)
    assert status == 426 and body["title"] == "Upgrade Required", body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert "X-Correlation-ID" in headers

    # Refused tokens: the upgrade is accepted, then closed with 4401 and the reason.
    for token, reason in [
        (None, "missing Authorization"),
        ("not-a-jwt", "not a JWT"),
        (s.services.token("alice", ttl=-60), "token has expired"),
    ]:
        refused = await s.client(s.a, token, f"refused: {reason}", via_query=True)
        code, text = await refused.closed()
        assert code == 4401 and reason in (text or ""), (code, text)
        assert refused.messages == []

    # Alice on both workers (header and query auth), Bob, and an admin.
    a1 = await s.client(s.a, s.alice, "alice@a")
    a2 = await s.client(s.b, s.alice, "alice@b", via_query=True)
    b1 = await s.client(s.a, s.bob, "bob@a")
    adm = await s.client(s.b, s.admin, "admin@b", via_query=True)
    for client, user, roles in [
        (a1, "alice", ["customer"]),
        (a2, "alice", ["customer"]),
        (b1, "bob", ["customer"]),
        (adm, "mike", ["admin"]),
    ]:
        hello = await client.wait(lambda ms: ms[0] if ms else None, "hello")
        assert hello["type"] == "hello" and hello["user"] == user and hello["roles"] == roles
        assert hello["expires_at"].endswith("Z")

    sku = "T-001"
    restocked = await s.api_a.restock(s.admin, sku, 100)
    assert restocked["available"] == 100
    await adm.wait(level_of(sku, 100), f"{sku} at 100")
    assert not a1.of_type("inventory.level") and not b1.of_type("inventory.level")

    # Alice's orders, through both workers, until every partition (so both workers' share of
    # the orders) has some; one is declined.
    expected: dict[str, list[str]] = {}
    for i in range(60):
        declined = i == 1
        payment = "tok_declined" if declined else "tok_ok"
        expected[await place(s.api(i), s.alice, sku, payment=payment)] = (
            DECLINED if declined else OK
        )
        if len(expected) >= 6 and {partition_of(o) for o in expected} == set(range(PARTITIONS)):
            break
    assert {partition_of(o) for o in expected} == set(range(PARTITIONS))
    bobs = await place(s.api_b, s.bob, sku)

    for client in (a1, a2):
        await client.wait(has_all(expected), "all of alice's statuses")
    await b1.wait(lambda ms: statuses(ms, bobs) == OK, "bob's order")

    # A cancel reaches both of Alice's devices too.
    cancelled = next(oid for oid, seq in expected.items() if seq == OK)
    status, body, _ = await s.api_b.call("POST", f"/v1/orders/{cancelled}/cancel", s.alice)
    assert status == 202, body
    expected[cancelled] = [*OK, "CANCELLED"]
    for client in (a1, a2):
        await client.wait(has_all(expected), "the cancel")
        for oid, seq in expected.items():
            assert statuses(client.messages, oid) == seq, (client.name, oid)
        assert not statuses(client.messages, bobs)
        mine = [m for m in client.of_type("order.status") if m["order_id"] == cancelled]
        assert [m["version"] for m in mine] == sorted(m["version"] for m in mine)
        assert [m["previous"] for m in mine] == [None, *OK]
    assert {m["order_id"] for m in b1.of_type("order.status")} == {bobs}
    assert not adm.of_type("order.status")

    # Held stock: one unit per confirmed order (Alice's not cancelled, and Bob's); the admin
    # sees that level, the latest message agrees with the API once the projection caught up.
    held = sum(1 for seq in expected.values() if seq == OK) + 1

    def latest(ms: Messages) -> dict[str, Any] | None:
        levels = [m for m in ms if m["type"] == "inventory.level" and m["sku"] == sku]
        return levels[-1] if levels and levels[-1]["available"] == 100 - held else None

    await adm.wait(latest, f"{sku} at {100 - held}")
    levels = [m for m in adm.of_type("inventory.level") if m["sku"] == sku]
    assert [m["version"] for m in levels] == sorted({m["version"] for m in levels})
    assert (levels[-1]["on_hand"], levels[-1]["reserved"]) == (100, held)

    async def projected() -> bool:
        api = await s.api_a.stock(s.admin, sku)
        return (api["on_hand"], api["reserved"], api["available"]) == (100, held, 100 - held)

    await eventually(projected, DEADLINE, f"the API to show {sku} at {100 - held}")

    await _client_messages_and_sync(s, expected, a1)
    await _low_stock(s, adm)

    # A token that expires while connected: closed with 4401 "token expired".
    short = await s.client(s.b, s.services.token("alice", ttl=3), "short-lived")
    await short.wait(lambda ms: ms and ms[0]["type"] == "hello", "hello")
    code, text = await short.closed(timeout=20)
    assert (code, text) == (4401, "token expired")

    await _dead_clients_do_not_stall(s, readers=(a1, a2), admin=adm)

    # Shutdown: worker b closes its sockets with 1001.
    await asyncio.to_thread(s.b.stop)
    for client in (a2, adm):
        code, text = await client.closed(timeout=10)
        assert (code, text) == (1001, "server shutting down"), client.name


async def _feed_ready(session: aiohttp.ClientSession, worker: Worker) -> bool:
    try:
        # order-status and stock-levels, and worker-status's one partition (the console's)
        return await metric_sum(session, worker, "orion_live_feed_partitions") == 2 * PARTITIONS + 1
    except aiohttp.ClientError:
        return False


def _first(kind: str) -> Callable[[Messages], Any]:
    return lambda ms: next((m for m in ms if m["type"] == kind), None)


async def _client_messages_and_sync(s: Stack, expected: dict[str, list[str]], a1: Client) -> None:
    """ping -> pong, nonsense -> error (still open), sync -> open orders as snapshots."""
    await a1.ws.send_json({"type": "ping"})
    await a1.wait(_first("pong"), "pong")
    await a1.ws.send_str("not json")
    await a1.ws.send_json({"type": "dance"})
    await a1.wait(lambda ms: len([m for m in ms if m["type"] == "error"]) >= 2, "two errors")
    assert "dance" in a1.of_type("error")[1]["detail"]

    # Snapshots come from PostgreSQL: wait until the projection has every final status.
    for oid, seq in expected.items():
        await s.api_a.decided(s.alice, oid, final=(seq[-1],))
    open_orders = {oid for oid, seq in expected.items() if seq[-1] == "CONFIRMED"}

    def snapshots(ms: Messages) -> Messages:
        return [m for m in ms if m.get("snapshot")]

    await a1.ws.send_json({"type": "sync"})
    await a1.ws.send_json({"type": "sync"})  # right after the first: refused, the socket stays
    done = await a1.wait(_first("sync.done"), "sync.done")
    await a1.wait(lambda ms: len([m for m in ms if m["type"] == "error"]) >= 3, "a refused sync")
    assert "at most once" in a1.of_type("error")[2]["detail"]
    snaps = snapshots(a1.messages)
    assert {m["order_id"] for m in snaps} == open_orders and done["count"] == len(open_orders)
    assert all(
        m["type"] == "order.status" and m["status"] == "CONFIRMED" and m["at"] for m in snaps
    )
    assert len(a1.of_type("sync.done")) == 1 and not a1.ended

    on_connect = await s.client(s.a, s.alice, "alice+sync", sync=True)
    done = await on_connect.wait(_first("sync.done"), "sync.done")
    assert on_connect.messages[0]["type"] == "hello"
    assert {m["order_id"] for m in snapshots(on_connect.messages)} == open_orders
    assert done["count"] == len(open_orders)


async def _low_stock(s: Stack, adm: Client) -> None:
    """One order takes a SKU below its threshold, a second keeps it low: one stock.low."""
    sku = "T-002"
    # HTTP adjustments keep a SKU's threshold (0 for the test catalog); the seed command sets it.
    stock = [DemoStock(sku, on_hand=10, low_stock_threshold=5)]
    await publish_seed_stock(s.services.bootstrap, stock)
    await adm.wait(level_of(sku, 10), f"{sku} seeded")
    first = await place(s.api_a, s.alice, sku, quantity=6)
    await adm.wait(level_of(sku, 4), f"{sku} at 4")
    await s.api_a.decided(s.alice, first)
    second = await place(s.api_b, s.alice, sku, quantity=1)
    await adm.wait(level_of(sku, 3), f"{sku} at 3")
    assert (await s.api_a.decided(s.alice, second))["status"] == "CONFIRMED"
    alerts = [m for m in adm.of_type("stock.low") if m["sku"] == sku]
    assert len(alerts) == 1, alerts
    assert (alerts[0]["available"], alerts[0]["threshold"]) == (4, 5) and alerts[0]["at"]
    low = [m for m in adm.of_type("inventory.level") if m["sku"] == sku and m["available"] <= 5]
    assert low and all(m["low_stock"] for m in low)


async def _dead_clients_do_not_stall(s: Stack, readers: tuple[Client, ...], admin: Client) -> None:
    """Clients that never read (raw TCP sockets, an aiohttp client that never receives)
    neither hold up the pipeline nor the readers, and are dropped."""
    dropped = "orion_websocket_dropped_total"
    before = {w.name: await metric_sum(s.session, w, dropped) for w in (s.a, s.b)}
    sku = "T-003"
    await s.api_a.restock(s.admin, sku, RUSH + 10)
    s.dead.append(await raw_dead_client(s.a, s.alice))
    s.dead.append(await raw_dead_client(s.b, s.admin))
    silent = await s.session.ws_connect(ws_url(s.b), headers={"Authorization": f"Bearer {s.alice}"})
    try:
        pending = list(range(RUSH))
        placed: list[str] = []

        async def rush() -> None:
            while pending:
                i = pending.pop()
                placed.append(await place(s.api(i), s.alice, sku))

        await asyncio.gather(*(rush() for _ in range(10)))

        async def confirmed() -> bool:
            status, body, _ = await s.api_a.call("GET", "/v1/orders?limit=100", s.alice)
            assert status == 200, body
            seen = {o["order_id"]: o["status"] for o in body["items"]}
            return all(seen.get(oid) == "CONFIRMED" for oid in placed)

        await eventually(confirmed, 90, f"{RUSH} orders confirmed")
        for client in readers:
            await client.wait(has_all(dict.fromkeys(placed, OK)), f"all {RUSH} orders' statuses")
            assert all(statuses(client.messages, oid) == OK for oid in placed), client.name
        await admin.wait(level_of(sku, 10), f"{sku} at 10")

        # The dead are gone: dropped counters moved, gauges count only the live sockets.
        expected_drops = {s.a.name: 1, s.b.name: 2}

        async def gone() -> bool:
            for w in (s.a, s.b):
                live = sum(1 for c in s.clients if c.worker is w and not c.ended)
                if await metric_sum(s.session, w, "orion_websocket_connections") != live:
                    return False
                if (
                    await metric_sum(s.session, w, dropped)
                    < before[w.name] + expected_drops[w.name]
                ):
                    return False
            return True

        await eventually(gone, 30, "dead clients dropped")
    finally:
        await silent.close()
