"""`GET /v1/ws` (web/ws.py `LiveEndpoint`) over a real WebSocket in-process, with a fake read
model and no live feed (nothing reads Kafka): the hello, ping/pong, sync of open orders, the
close codes for refused tokens (4401) and too many sockets (4429), and errors for messages
it does not know. Every wait has a deadline; none is a fixed sleep."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType
from prometheus_client import REGISTRY

from orion_streams import records
from orion_streams.adapters.live import Hub
from orion_streams.config import Settings
from orion_streams.web import ws as ws_module
from orion_streams.web.auth import TokenVerifier
from orion_streams.web.ws import PATH, TOO_MANY, LiveEndpoint

from .web_fakes import ALICE, BOB, SETTINGS, FakeRuntime, bearer, order_row, problem, serve_ws

DEADLINE = 5.0
UNAUTHORIZED, GOING_AWAY = 4401, 1001


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def message(ws: ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=DEADLINE)
    assert msg.type is WSMsgType.TEXT, msg
    data: dict[str, Any] = records.parse_json(msg.data)
    return data


async def close_of(
    ws: ClientWebSocketResponse, deadline: float = DEADLINE,
) -> tuple[int, str, list[dict[str, Any]]]:
    """Read until the server closes: (close code, reason, the messages before it)."""
    before: list[dict[str, Any]] = []
    while True:
        msg = await ws.receive(timeout=deadline)
        if msg.type is WSMsgType.TEXT:
            before.append(records.parse_json(msg.data))
            continue
        assert msg.type is WSMsgType.CLOSE, msg
        return msg.data, msg.extra or "", before


def watch_disconnects(endpoint: LiveEndpoint) -> asyncio.Queue[str]:
    """The user of every connection the endpoint lets go of, as its handler ends."""
    gone: asyncio.Queue[str] = asyncio.Queue()
    disconnect: Callable[..., Awaitable[None]] = endpoint.hub.disconnect

    async def spy(conn: Any, dropped: str | None = None) -> None:
        await disconnect(conn, dropped)
        gone.put_nowait(conn.user_id)

    endpoint.hub.disconnect = spy  # type: ignore[method-assign]
    return gone


async def test_hello_comes_first_then_ping_is_answered_with_pong() -> None:
    async with serve_ws() as (client, endpoint):
        gone = watch_disconnects(endpoint)
        async with client.ws_connect(PATH, headers=bearer(ALICE)) as ws:
            hello = await message(ws)
            assert hello["type"] == "hello" and hello["user"] == ALICE and hello["roles"] == ["customer"]
            assert isinstance(hello["expires_at"], str) and hello["expires_at"].endswith("Z")
            (conn,) = endpoint.hub.connections(ALICE)
            assert conn.admin is False and not endpoint.hub.admins
            await ws.send_json({"type": "ping"})
            assert await message(ws) == {"type": "pong"}
        assert await asyncio.wait_for(gone.get(), DEADLINE) == ALICE
        assert endpoint.hub.idle


async def test_hello_carries_the_tokens_expiry_and_roles() -> None:
    token = bearer("root", "admin", "customer")["Authorization"].removeprefix("Bearer ")
    exp = TokenVerifier(SETTINGS).verify(token).expires_at
    assert exp is not None
    async with serve_ws() as (client, endpoint), client.ws_connect(f"{PATH}?token={token}") as ws:
        assert await message(ws) == {
            "type": "hello", "user": "root", "roles": ["admin", "customer"], "expires_at": records.utc_iso(exp),
        }
        assert [c.user_id for c in endpoint.hub.admins] == ["root"]


def orders_of_alice_and_bob(runtime: FakeRuntime) -> None:
    for minute, (order_id, status) in enumerate([
        ("a-pending", "PENDING"), ("a-fulfilled", "FULFILLED"), ("a-confirmed", "CONFIRMED"),
        ("a-cancelled", "CANCELLED"), ("a-reserved", "RESERVED"), ("a-rejected", "REJECTED"),
    ]):
        runtime.store.add_order(order_row(order_id, ALICE, status, minute=minute))
    runtime.store.add_order(order_row("b-pending", BOB, "PENDING", minute=10))


def snapshot(order_id: str, status: str, at: str) -> dict[str, Any]:
    return {"type": "order.status", "order_id": order_id, "status": status, "at": at,
            "failure_reason": None, "snapshot": True}


async def test_sync_sends_the_users_open_orders_then_sync_done() -> None:
    runtime = FakeRuntime(SETTINGS)
    orders_of_alice_and_bob(runtime)
    async with serve_ws(runtime=runtime) as (client, _), client.ws_connect(PATH, headers=bearer(ALICE)) as ws:
        assert (await message(ws))["type"] == "hello"
        await ws.send_json({"type": "sync"})
        got = [await message(ws) for _ in range(4)]
    at = {o["order_id"]: o["updated_at"] for o in runtime.store.orders.values()}
    assert got == [
        snapshot("a-reserved", "RESERVED", at["a-reserved"]),
        snapshot("a-confirmed", "CONFIRMED", at["a-confirmed"]),
        snapshot("a-pending", "PENDING", at["a-pending"]),
        {"type": "sync.done", "count": 3},
    ]
    assert runtime.store.list_calls == [{"user_id": ALICE, "status": None, "limit": 100, "cursor": None}]


async def test_sync_on_connect_follows_the_hello() -> None:
    runtime = FakeRuntime(SETTINGS)
    orders_of_alice_and_bob(runtime)
    async with serve_ws(runtime=runtime) as (client, _), client.ws_connect(f"{PATH}?sync=1", headers=bearer(BOB)) as ws:
        got = [await message(ws) for _ in range(3)]
    assert [m["type"] for m in got] == ["hello", "order.status", "sync.done"]
    assert got[1]["order_id"] == "b-pending" and got[2]["count"] == 1


async def test_a_second_sync_within_the_interval_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_module, "SYNC_INTERVAL", 3600.0)
    runtime = FakeRuntime(SETTINGS)
    async with serve_ws(runtime=runtime) as (client, _), client.ws_connect(PATH, headers=bearer(ALICE)) as ws:
        await message(ws)
        await ws.send_json({"type": "sync"})
        assert await message(ws) == {"type": "sync.done", "count": 0}
        await ws.send_json({"type": "sync"})
        refused = await message(ws)
        assert refused["type"] == "error" and "sync at most once" in refused["detail"]
    assert len(runtime.store.list_calls) == 1


async def test_a_sync_the_database_cannot_answer_is_an_error_and_the_socket_stays() -> None:
    runtime = FakeRuntime(SETTINGS)
    runtime.ready_error = ConnectionRefusedError("database restarting")
    async with serve_ws(runtime=runtime) as (client, _), client.ws_connect(PATH, headers=bearer(ALICE)) as ws:
        await message(ws)
        await ws.send_json({"type": "sync"})
        failed = await message(ws)
        assert failed["type"] == "error" and "sync failed" in failed["detail"]
        assert "database restarting" not in failed["detail"]
        await ws.send_json({"type": "ping"})
        assert await message(ws) == {"type": "pong"}


@pytest.mark.parametrize(("send", "says"), [
    ('{"type": "unsubscribe"}', "unknown message type 'unsubscribe'"),
    ('{"type": "subscribe"}', "unknown feed none"),
    ('{"type": "subscribe", "feed": "orders"}', "unknown feed 'orders'"),
    ("ping", "must be JSON objects"),
    ("[1, 2]", "string 'type'"),
    ('{"type": 7}', "string 'type'"),
    ('{"kind": "ping"}', "string 'type'"),
    (b'{"type": "ping"}', "send JSON as text messages"),
])
async def test_a_message_it_does_not_know_is_an_error_and_the_socket_stays(send: str | bytes, says: str) -> None:
    async with serve_ws() as (client, endpoint), client.ws_connect(PATH, headers=bearer(ALICE)) as ws:
        await message(ws)
        if isinstance(send, bytes):
            await ws.send_bytes(send)
        else:
            await ws.send_str(send)
        error = await message(ws)
        assert error["type"] == "error" and says in error["detail"]
        await ws.send_json({"type": "ping"})
        assert await message(ws) == {"type": "pong"}
        assert len(endpoint.hub.connections(ALICE)) == 1


@pytest.mark.parametrize(("headers", "query", "reason"), [
    ({}, "", "missing Authorization"),
    ({"Authorization": "Bearer not.a.jwt"}, "", "token"),
    ({}, "?token=" + bearer(ALICE, settings=Settings(jwt_secret="y" * 40))["Authorization"][7:], "signature"),
    (bearer(ALICE, ttl=-60), "", "expired"),
    ({"Authorization": "Token abc"}, "", "Bearer"),
])
async def test_a_refused_token_gets_the_upgrade_then_close_4401_with_the_reason(
    headers: dict[str, str], query: str, reason: str,
) -> None:
    async with serve_ws() as (client, endpoint), client.ws_connect(PATH + query, headers=headers) as ws:
        code, said, before = await close_of(ws)
    assert (code, before) == (UNAUTHORIZED, [])
    assert reason in said
    assert endpoint.hub.idle


# Python 3.11's asyncio.wait_for returns the result of an awaitable that finished when its
# task was cancelled, and the cancellation is lost. Connection._write sent through wait_for, so
# a writer cancelled just as a send finished went on waiting for its next message, and
# Hub._stop_writer never returned: the close (4401 here) was never sent. It sends under
# asyncio.timeout now; these two tests failed before.
async def test_a_token_that_expires_while_connected_closes_the_socket_with_4401() -> None:
    # Expired a moment ago but within the verifier's leeway: let in, then closed at once
    # (the expiry fires while the hello is being written).
    async with serve_ws() as (client, _), client.ws_connect(PATH, headers=bearer(ALICE, ttl=-2)) as ws:
        code, said, before = await close_of(ws, deadline=1.0)
    assert code == UNAUTHORIZED and said == "token expired"
    assert [m["type"] for m in before] in ([], ["hello"])


class InstantSocket:
    """A socket whose sends complete at once."""

    def __init__(self) -> None:
        self.sent = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_code: int | None = None

    async def send_str(self, data: str) -> None:
        self.sent.set()

    async def close(self, code: int, reason: str) -> None:
        self.close_code = code
        self.closed.set()


async def test_the_hub_closes_a_socket_dropped_just_as_a_send_finished() -> None:
    """The root cause of the test above, without HTTP: the drop comes right after the send
    of the hello completed, before the writer task resumed."""
    hub = Hub()
    sock = InstantSocket()
    conn = hub.connect(ALICE, sock, first={"type": "hello"})
    try:
        async with asyncio.timeout(DEADLINE):  # no task in between: the drop comes next
            await sock.sent.wait()
        hub.drop(conn, None, UNAUTHORIZED, "token expired")
        await asyncio.wait_for(sock.closed.wait(), 1.0)
        assert sock.close_code == UNAUTHORIZED
    finally:  # leave no task behind: the writer now waits on its queue and can be cancelled
        for task in (conn._writer, conn._closing):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, DEADLINE)


async def test_too_many_sockets_for_one_user_close_with_4429() -> None:
    settings = Settings(ws_max_per_user=2)
    refused = metric("orion_websocket_refused_total", reason="too_many")
    async with serve_ws(settings) as (client, endpoint):
        first = await client.ws_connect(PATH, headers=bearer(ALICE, settings=settings))
        second = await client.ws_connect(PATH, headers=bearer(ALICE, settings=settings))
        assert (await message(first))["type"] == (await message(second))["type"] == "hello"
        async with client.ws_connect(PATH, headers=bearer(ALICE, settings=settings)) as third:
            code, said, before = await close_of(third)
        assert (code, said, before) == (TOO_MANY, "at most 2 connections per user", [])
        assert metric("orion_websocket_refused_total", reason="too_many") == refused + 1
        assert len(endpoint.hub.connections(ALICE)) == 2
        # Another user is not counted against alice.
        async with client.ws_connect(PATH, headers=bearer(BOB, settings=settings)) as bobs:
            assert (await message(bobs))["user"] == BOB
        # Both of alice's sockets still work.
        for ws in (first, second):
            await ws.send_json({"type": "ping"})
            assert await message(ws) == {"type": "pong"}
            await ws.close()


async def test_shutdown_closes_every_socket_with_1001() -> None:
    async with serve_ws() as (client, endpoint), client.ws_connect(PATH, headers=bearer(ALICE)) as ws:
        await message(ws)
        closing = asyncio.ensure_future(endpoint.close_sockets(client.app))
        code, said, _ = await close_of(ws)
        await asyncio.wait_for(closing, DEADLINE)
    assert (code, said) == (GOING_AWAY, "server shutting down")


async def test_a_plain_get_is_426_problem() -> None:
    async with serve_ws() as (client, _):
        response = await client.get(PATH, headers=bearer(ALICE))
        await problem(response, 426)
        assert response.headers["Upgrade"] == "websocket"
