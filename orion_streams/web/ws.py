"""`GET /v1/ws`: live order and stock updates over a WebSocket (see API.md).

`register` adds the route to Faust's aiohttp application, before the web server starts and
freezes the router, and `LiveUpdates`, the app service that runs this worker's `LiveFeed`
(a group-less consumer of every partition of `order-status`, `stock-levels` and
`worker-status`). When the worker stops, the service and aiohttp's `on_shutdown` close every
socket with 1001.

Authentication uses the API's JWTs, from `Authorization: Bearer` or the `token` query
parameter, or an API key, from `X-API-Key` or the `api_key` query parameter. A refused token
or key still gets the upgrade, then a close with 4401 and the reason, because browsers cannot
read an HTTP 401 answer to an upgrade; the same close ends a connection when its token
expires.

`{"type": "subscribe", "feed": "console"}` puts an admin's connection, or one of a key with
the scope `ops`, on the ops console's feed (adapters/live.py `Console`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any, cast

import mode
from aiohttp import WSMsgType, web

from .. import metrics
from ..adapters import kafka_auth
from ..adapters.live import (
    GOING_AWAY,
    TRY_AGAIN_LATER,
    UNAUTHORIZED,
    Connection,
    Console,
    Dispatcher,
    Hub,
    LiveFeed,
    hello_message,
    is_open,
    order_snapshot_message,
)
from .auth import Principal, TokenVerifier
from .identity import API_KEY_HEADER, KeyPrincipal, key_principal
from .middleware import CORRELATION_ID, CORRELATION_KEY
from .problems import ApiError

if TYPE_CHECKING:
    from ..app import Orion
    from ..bootstrap import Runtime
    from ..config import Settings

log = logging.getLogger("orion.ws")

PATH = "/v1/ws"
# Close code for a user who already has ORION_WS_MAX_PER_USER sockets open.
TOO_MANY = 4429
WS_REFUSED = metrics.WS_REFUSED
# A send that takes longer than this drops the client as too slow.
SEND_TIMEOUT = 10.0
# How long a close waits for the client's close frame, and for the whole close.
CLOSE_HANDSHAKE = 3.0
CLOSE_TIMEOUT = 5.0
SYNC_LIMIT = 100
SYNC_INTERVAL = 1.0
MAX_CLIENT_MESSAGE = 64 * 1024
CONSOLE_FEED = "console"
# The API-key scope that opens the console feed (admins' tokens open it too).
OPS_SCOPE = "ops"

def _reason(text: str) -> bytes:
    """A close reason fits in 123 bytes of UTF-8."""
    return text.encode()[:123].decode(errors="ignore").encode()


class AiohttpSocket:
    """aiohttp's WebSocketResponse as the hub's `Socket`; a close that hangs (a client that
    reads nothing, so the close frame never drains) aborts the TCP connection."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request

    async def send_str(self, data: str) -> None:
        await self.ws.send_str(data)

    async def close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=_reason(reason)), CLOSE_TIMEOUT)
        except Exception as exc:  # timed out or the transport broke: cut the connection
            log.debug("close %d did not complete (%s); aborting", code, type(exc).__name__)
            self.abort()

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()


async def _authenticate(request: web.Request, verifier: TokenVerifier, runtime: Runtime) -> Principal:
    """A key (`X-API-Key`, else `?api_key=`) or a token (`Authorization`, else `?token=`);
    ApiError (401) when refused, any other exception when keys cannot be checked now."""
    key = request.headers.get(API_KEY_HEADER) or request.query.get("api_key")
    if key is not None and key.strip():
        return await key_principal(runtime, key)
    header = request.headers.get("Authorization")
    if header:
        return verifier.authenticate(header)
    token = request.query.get("token", "").strip()
    if not token:
        return verifier.authenticate(None)  # raises: no credentials
    return verifier.verify(token)


def _error(detail: str) -> dict[str, Any]:
    return {"type": "error", "detail": detail}


class LiveSession:
    """What one connected client asked for: answers its messages on its own connection."""

    def __init__(
        self, conn: Connection, principal: Principal, runtime: Runtime, console: Console | None = None,
    ) -> None:
        self.conn = conn
        self.principal = principal
        self.runtime = runtime
        self.console = console
        self._last_sync = float("-inf")

    async def handle(self, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            await self.conn.send(_error("messages must be JSON objects with a 'type'"))
            return
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "ping":
            await self.conn.send({"type": "pong"})
        elif kind == "sync":
            await self.sync()
        elif kind == "subscribe":
            await self.subscribe(data.get("feed"))
        elif isinstance(kind, str):
            await self.conn.send(
                _error(f"unknown message type {kind[:50]!r}; send 'ping', 'sync' or 'subscribe'")
            )
        else:
            await self.conn.send(_error("messages must be JSON objects with a string 'type'"))

    def may_watch_console(self) -> bool:
        """Admins, and API keys with the scope `ops`."""
        principal = self.principal
        if isinstance(principal, KeyPrincipal):
            return OPS_SCOPE in principal.scopes
        return principal.is_admin

    async def subscribe(self, feed: Any) -> None:
        if feed != CONSOLE_FEED:
            shown = repr(feed[:50]) if isinstance(feed, str) else "none"
            await self.conn.send(_error(f"unknown feed {shown}; the only feed is 'console'"))
            return
        if not self.may_watch_console():
            await self.conn.send(_error(f"the console feed is for admins and API keys with the scope {OPS_SCOPE}"))
            return
        if self.console is None:  # no feed behind this endpoint
            await self.conn.send(_error("the console feed is not available on this server"))
            return
        # The answer is queued and the connection subscribed at once: the answer comes first
        # and nothing published after it is missed.
        self.console.subscribe(self.conn, first={"type": "subscribed", "feed": CONSOLE_FEED})

    async def sync(self) -> None:
        """The user's open orders (among the latest SYNC_LIMIT) as snapshots, then sync.done.
        A sync asked within SYNC_INTERVAL of the end of the previous one is refused, so a
        client cannot keep PostgreSQL busy."""
        if time.monotonic() - self._last_sync < SYNC_INTERVAL:
            await self.conn.send(_error(f"sync at most once per {SYNC_INTERVAL:g} s"))
            return
        try:
            await self._sync()
        finally:
            self._last_sync = time.monotonic()

    async def _sync(self) -> None:
        try:
            await self.runtime.ready()
            items, _ = await self.runtime.store.list_orders(
                user_id=self.principal.subject, status=None, limit=SYNC_LIMIT, cursor=None
            )
        except Exception as exc:  # PostgreSQL away: the client may ask again
            log.warning("sync for %s failed: %s", self.principal.subject, exc)
            await self.conn.send(_error("sync failed: orders are unavailable right now; try again"))
            return
        open_orders = [order for order in items if is_open(order["status"])]
        for order in open_orders:
            if not await self.conn.send(order_snapshot_message(order)):
                return
        await self.conn.send({"type": "sync.done", "count": len(open_orders)})


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


class LiveEndpoint:
    """`GET /v1/ws` of one worker: its hub of connections and the feed that fills it."""

    def __init__(self, settings: Settings, runtime: Runtime, verifier: TokenVerifier) -> None:
        self.settings, self.runtime, self.verifier = settings, runtime, verifier
        self.hub = hub = Hub(queue_size=settings.ws_queue_size, send_timeout=SEND_TIMEOUT, close_timeout=CLOSE_TIMEOUT)
        self.console = Console(hub)
        self.feed = LiveFeed(
            settings.kafka_bootstrap,
            Dispatcher(hub, self.console),
            client_id=f"orion-live-{settings.worker_id}",
            idle=lambda: hub.idle,
            options=kafka_auth.client_options(settings),
        )

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """The WebSocket endpoint: authenticate, register with the hub, answer client messages."""
        ws = web.WebSocketResponse(
            heartbeat=self.settings.ws_heartbeat or None,
            timeout=CLOSE_HANDSHAKE,
            max_msg_size=MAX_CLIENT_MESSAGE,
        )
        if not ws.can_prepare(request):
            raise ApiError(
                426,
                "Upgrade Required",
                f"GET {PATH} needs a WebSocket upgrade",
                headers={"Upgrade": "websocket"},
            )
        principal: Principal | None = None
        refusal, refused_with = "", UNAUTHORIZED
        try:
            principal = await _authenticate(request, self.verifier, self.runtime)
        except ApiError as exc:
            refusal = exc.detail
        except Exception as exc:  # the key store is away: not the key's fault, try again
            log.warning("WebSocket: API key not checked: %s", exc)
            refusal, refused_with = "API keys cannot be checked right now; try again", TRY_AGAIN_LATER
        cid = request.get(CORRELATION_KEY)
        if cid:
            ws.headers[CORRELATION_ID] = cid
        await ws.prepare(request)
        if principal is None:
            with contextlib.suppress(Exception):
                await ws.close(code=refused_with, message=_reason(refusal))
            return ws

        if len(self.hub.connections(principal.subject)) >= self.settings.ws_max_per_user:
            WS_REFUSED.labels("too_many").inc()
            with contextlib.suppress(Exception):
                await ws.close(
                    code=TOO_MANY, message=_reason(f"at most {self.settings.ws_max_per_user} connections per user")
                )
            return ws

        hello = hello_message(principal.subject, principal.roles, principal.expires_at)
        conn = self.hub.connect(
            principal.subject, AiohttpSocket(ws, request), admin=principal.is_admin, first=hello
        )
        expiry: asyncio.TimerHandle | None = None
        if principal.expires_at is not None:
            expiry = asyncio.get_running_loop().call_later(
                max(principal.expires_at - time.time(), 0.0),
                self.hub.drop,
                conn,
                "expired",
                UNAUTHORIZED,
                "token expired",
            )
        session = LiveSession(conn, principal, self.runtime, self.console)
        dropped: str | None = None
        try:
            if _flag(request.query.get("sync")):
                await session.sync()
            while not conn.closed:
                msg = await ws.receive()
                if msg.type is WSMsgType.TEXT:
                    await session.handle(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await conn.send(_error("send JSON as text messages"))
                else:
                    if msg.type is WSMsgType.ERROR:
                        # No pong within half the heartbeat: a dead client, or a broken connection.
                        dropped = "heartbeat" if isinstance(ws.exception(), TimeoutError) else "error"
                    break  # CLOSE, CLOSING, CLOSED or ERROR
        except Exception:  # never let an error escape a prepared WebSocket into the middleware
            log.exception("WebSocket handler for %s failed", principal.subject)
            dropped = dropped or "error"
        finally:
            if expiry is not None:
                expiry.cancel()
            await self.hub.disconnect(conn, dropped)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(code=GOING_AWAY), CLOSE_TIMEOUT)
        return ws

    async def close_sockets(self, _: web.Application) -> None:
        await self.console.stop()
        await self.hub.close_all(GOING_AWAY, "server shutting down")


class LiveUpdates(mode.Service):
    """Runs this worker's live feed; closes every socket with 1001 when the worker stops."""

    _feed_task: asyncio.Task[None] | None = None

    def __init__(self, endpoint: LiveEndpoint, **kwargs: Any) -> None:
        self.endpoint = endpoint
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        self._feed_task = asyncio.create_task(self.endpoint.feed.run(), name="orion-live-feed")

    async def on_stop(self) -> None:
        task, self._feed_task = self._feed_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)
        await self.endpoint.console.stop()
        await self.endpoint.hub.close_all(GOING_AWAY, "server shutting down")


def register(orion: Orion, verifier: TokenVerifier) -> LiveEndpoint:
    """The route, its shutdown hook and the live feed's service. Faust's aiohttp driver
    freezes the router when its server starts (after table recovery), so they go in now."""
    endpoint = LiveEndpoint(orion.settings, orion.runtime, verifier)
    app = orion.app
    app.service(cast(Any, LiveUpdates(endpoint, beacon=app.beacon)))
    web_app = cast(Any, app.web).web_app
    web_app.router.add_get(PATH, endpoint.websocket, allow_head=False)
    web_app.on_shutdown.append(endpoint.close_sockets)
    return endpoint
