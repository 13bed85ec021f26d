"""Fakes for the HTTP views and the WebSocket endpoint: a read model, key and notification
stores, a runtime, a bus and a watchdog held in memory, and an in-process aiohttp server
that routes each path to its view the way Faust's aiohttp driver does (one instance per
view, every method it implements, dispatched through `View.__call__`), behind the API's own
middleware. No broker, no database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from faust.web import View

from orion_streams.adapters.apikeys import ApiKey
from orion_streams.adapters.postgres import decode_cursor, encode_cursor
from orion_streams.config import Settings
from orion_streams.domain.catalog import DEMO_PRODUCTS, Catalog, Product
from orion_streams.services.admission import Admission
from orion_streams.services.ports import Accepted
from orion_streams.web import apikeys, console, dead_letters, notifications, openapi, views
from orion_streams.web.auth import issue_token
from orion_streams.web.middleware import CORRELATION_ID, correlation_and_problems
from orion_streams.web.problems import PROBLEM_JSON
from orion_streams.web.views import Api
from orion_streams.web.ws import PATH as WS_PATH
from orion_streams.web.ws import LiveEndpoint

SETTINGS = Settings()  # the development secret: tokens are issued and checked with it
ALICE, BOB = "alice", "bob"
# Every route `web.register` adds, as it adds them.
ALL_ROUTES: tuple[tuple[str, type[View]], ...] = (
    *views.ROUTES, *apikeys.ROUTES, *notifications.ROUTES, *dead_letters.ROUTES, *openapi.ROUTES,
    *console.ROUTES,
)
EPOCH = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
BODY_LIMIT = 256 * 1024  # as app.faust_app gives aiohttp (client_max_size)


def bearer(subject: str = ALICE, *roles: str, settings: Settings = SETTINGS, ttl: float = 3600) -> dict[str, str]:
    """The Authorization header of a token for `subject` (role customer unless given)."""
    token = issue_token(settings, subject, roles or ("customer",), ttl=ttl)
    return {"Authorization": f"Bearer {token}"}


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def order_row(
    order_id: str, user_id: str = ALICE, status: str = "PENDING", *, minute: int = 0,
    lines: Sequence[tuple[str, int, int]] = (("SKU-001", 1, 4_999),),
) -> dict[str, Any]:
    """An order as the read model answers it (adapters/postgres.py `_order_view`)."""
    at = EPOCH + timedelta(minutes=minute)
    return {
        "order_id": order_id, "user_id": user_id, "status": status,
        "lines": [{"sku": s, "quantity": q, "unit_price": p, "line_total": q * p} for s, q, p in lines],
        "total": sum(q * p for _, q, p in lines), "currency": "EUR",
        "created_at": iso(at), "updated_at": iso(at), "failure_reason": None,
    }


def product_view(p: Product) -> dict[str, Any]:
    return {"sku": p.sku, "name": p.name, "unit_price": p.unit_price, "currency": p.currency,
            "active": p.active, "category": p.category}


def stock_row(sku: str, on_hand: int = 500, reserved: int = 0, threshold: int = 20) -> dict[str, Any]:
    available = on_hand - reserved
    return {"sku": sku, "on_hand": on_hand, "reserved": reserved, "available": available,
            "low_stock_threshold": threshold, "low_stock": available <= threshold, "version": 1,
            "updated_at": iso(EPOCH)}


class FakeStore:
    """The read model in memory, with the answers the views ask of SqlAlchemyStore. Cursors
    are the real ones (adapters/postgres.py), so a made-up cursor is refused as it would be."""

    def __init__(self, catalog: Catalog) -> None:
        self.orders: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.products = [product_view(p) for p in catalog.products()]
        self.stock: dict[str, dict[str, Any]] = {}
        # What `adjustment(id)` answers (any id): None while the owner has not applied it.
        self.adjustment_answer: dict[str, Any] | None = None
        self.adjustments_asked: list[str] = []
        self.by_key: dict[tuple[str, str], dict[str, Any]] = {}
        self.accepted: list[list[Accepted]] = []
        self.record_error: Exception | None = None
        self.list_calls: list[dict[str, Any]] = []
        self.ping_error: Exception | None = None
        self.in_flight: tuple[int, datetime | None] | Exception = (0, None)
        self.in_flight_asked: list[int] = []
        # Answers of get_order in turn, before the stored order (an order deciding meanwhile).
        self.order_answers: list[dict[str, Any] | None] = []

    def add_order(self, row: dict[str, Any]) -> dict[str, Any]:
        self.orders[row["order_id"]] = row
        return row

    async def get_order(self, order_id: str) -> dict[str, Any] | None:
        if self.order_answers:
            return self.order_answers.pop(0)
        return self.orders.get(order_id)

    async def list_orders(
        self, *, user_id: str | None, status: str | None, limit: int, cursor: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        self.list_calls.append({"user_id": user_id, "status": status, "limit": limit, "cursor": cursor})
        rows = sorted(self.orders.values(), key=lambda o: (o["created_at"], o["order_id"]), reverse=True)
        rows = [o for o in rows if (user_id is None or o["user_id"] == user_id)
                and (status is None or o["status"] == status)]
        if cursor:
            created, key = decode_cursor(cursor)  # InvalidCursor for one not issued here
            rows = [o for o in rows if (o["created_at"], o["order_id"]) < (iso(created), key)]
        page = rows[:limit]
        if len(rows) <= limit:
            return page, None
        last = page[-1]
        return page, encode_cursor(datetime.fromisoformat(last["created_at"]), last["order_id"])

    async def order_events(self, order_id: str) -> list[dict[str, Any]]:
        return list(self.events.get(order_id, []))

    async def list_products(self) -> list[dict[str, Any]]:
        return list(self.products)

    async def get_product(self, sku: str) -> dict[str, Any] | None:
        return next((p for p in self.products if p["sku"] == sku), None)

    async def list_stock(self, *, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        rows = sorted(self.stock.values(), key=lambda r: r["sku"])
        if cursor:
            _, after = decode_cursor(cursor)
            rows = [r for r in rows if r["sku"] > after]
        page = rows[:limit]
        next_cursor = encode_cursor(EPOCH, page[-1]["sku"]) if len(rows) > limit else None
        return page, next_cursor

    async def get_stock(self, sku: str) -> dict[str, Any] | None:
        return self.stock.get(sku)

    async def adjustment(self, adjustment_id: str) -> dict[str, Any] | None:
        self.adjustments_asked.append(adjustment_id)
        return self.adjustment_answer

    async def find_by_idempotency_key(self, user_id: str, key: str) -> dict[str, Any] | None:
        return self.by_key.get((user_id, key))

    async def record_accepted(self, orders: Sequence[Accepted]) -> None:
        """Pre-record accepted orders; their Idempotency-Keys are found from then on."""
        if self.record_error is not None:
            raise self.record_error
        self.accepted.append(list(orders))
        for o in orders:
            if o.idempotency_key is not None:
                self.by_key[(o.user_id, o.idempotency_key)] = {"order_id": o.order_id, "request_hash": o.request_hash}

    async def ping(self) -> None:
        if self.ping_error is not None:
            raise self.ping_error

    async def orders_in_flight(self, skip: int) -> tuple[int, datetime | None]:
        self.in_flight_asked.append(skip)
        if isinstance(self.in_flight, Exception):
            raise self.in_flight
        return self.in_flight


class FakeApiKeys:
    """The API key store in memory (adapters/apikeys.py `ApiKeyStore`)."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, str] = {}  # key -> id
        self.created: list[tuple[str, list[str], str]] = []

    async def create(self, name: str, scopes: Iterable[str], created_by: str) -> tuple[str, dict[str, Any]]:
        scopes = sorted(set(scopes))
        self.created.append((name, scopes, created_by))
        key_id = f"ak_{len(self.records) + 1:016d}"
        key = f"orion_secret{len(self.records) + 1}"
        record = {"id": key_id, "name": name, "prefix": key[:12], "scopes": scopes, "created_by": created_by,
                  "created_at": iso(EPOCH), "last_used_at": None, "revoked_at": None, "active": True}
        self.records[key_id], self.secrets[key] = record, key_id
        return key, dict(record)

    def grant(self, name: str, *scopes: str) -> tuple[str, str]:
        """A key made directly (not through the API): (the key, its id)."""
        key_id = f"ak_grant{len(self.records) + 1:08d}"
        key = f"orion_grant{len(self.records) + 1}"
        self.records[key_id] = {"id": key_id, "name": name, "prefix": key[:12], "scopes": sorted(scopes),
                                "created_by": "user:root", "created_at": iso(EPOCH), "last_used_at": None,
                                "revoked_at": None, "active": True}
        self.secrets[key] = key_id
        return key, key_id

    async def list(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.records.values()]

    async def get(self, key_id: str) -> dict[str, Any] | None:
        record = self.records.get(key_id)
        return dict(record) if record is not None else None

    async def revoke(self, key_id: str) -> dict[str, Any] | None:
        record = self.records.get(key_id)
        if record is None:
            return None
        if record["revoked_at"] is None:
            record.update(revoked_at=iso(EPOCH + timedelta(days=1)), active=False)
        return dict(record)

    async def check(self, key: str) -> ApiKey | None:
        key_id = self.secrets.get(key)
        record = self.records.get(key_id) if key_id is not None else None
        if record is None or record["revoked_at"] is not None:
            return None
        return ApiKey(record["id"], record["name"], frozenset(record["scopes"]))


def notification_row(
    notification_id: str, order_id: str, status: str = "sent", attempts: int = 1,
) -> dict[str, Any]:
    """A delivery record (adapters/notification_store.py `_view`)."""
    return {"id": notification_id, "order_id": order_id, "sku": None, "template": "order_confirmed",
            "recipient": "alice@example.com", "subject": "Your order", "status": status, "attempts": attempts,
            "last_error": "550 mailbox unavailable" if status == "failed" else None, "server": "smtp.test",
            "message_id": None, "correlation_id": "c-1", "created_at": iso(EPOCH), "updated_at": iso(EPOCH),
            "next_attempt_at": iso(EPOCH) if status == "queued" else None, "sent_at": None}


class FakeNotifications:
    """The notification store in memory (adapters/notification_store.py)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.requeued: list[str] = []

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        self.rows[row["id"]] = row
        return row

    async def for_order(self, order_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows.values() if r["order_id"] == order_id]

    async def list_failed(self, *, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        if cursor is not None:
            decode_cursor(cursor)  # raises InvalidCursor as the real store does
        failed = [dict(r) for r in self.rows.values() if r["status"] == "failed"][::-1]
        return failed[:limit], None

    async def get(self, notification_id: str) -> dict[str, Any] | None:
        row = self.rows.get(notification_id)
        return dict(row) if row is not None else None

    async def requeue(self, notification_id: str) -> dict[str, Any] | None:
        row = self.rows.get(notification_id)
        if row is None or row["status"] != "failed":
            return None
        self.requeued.append(notification_id)
        row.update(status="queued", attempts=0, next_attempt_at=iso(EPOCH))
        return dict(row)


class FakeDeadLetters:
    """The dead-letter store in memory (adapters/dead_letter_store.py), rows as
    services/dead_letters.row_from_record makes them."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.audit: list[tuple[str, str, str, str | None]] = []

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        row.setdefault("status", "open")
        self.rows[row["id"]] = row
        return row

    def _view(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"id": row["id"], "status": row["status"], "key": row["key"], "reason": row["reason"]}

    async def page(self, *, status: str | None, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        if cursor is not None:
            decode_cursor(cursor)
        rows = [r for r in self.rows.values() if status is None or r["status"] == status][::-1]
        return [self._view(r) for r in rows[:limit]], None

    async def get(self, id: str) -> dict[str, Any] | None:
        row = self.rows.get(id)
        return self._view(row) if row is not None else None

    async def replay(self, id: str, caller: Any, decide: Any) -> Any:
        row = self.rows.get(id)
        outcome = await decide(row)
        if row is not None:
            if outcome.outcome == "replayed":
                row.update(status="replayed", replayed_at=EPOCH, replayed_by=caller.actor,
                           replay_partition=outcome.partition, replay_offset=outcome.offset)
            self.audit.append((id, caller.actor, outcome.outcome, caller.roles))
        return outcome


class FakeRuntime:
    """What views take from `bootstrap.Runtime`."""

    def __init__(self, settings: Settings, products: Iterable[Product] = DEMO_PRODUCTS) -> None:
        self.settings = settings
        self.catalog = Catalog(products)
        self.admission = Admission(max_decision_delay=settings.max_decision_delay, max_in_flight=settings.max_in_flight)
        self.store = FakeStore(self.catalog)
        self.api_keys = FakeApiKeys()
        self.notifications = FakeNotifications()
        self.dead_letters = FakeDeadLetters()
        self.ready_error: Exception | None = None
        self.kafka_error: Exception | None = None
        self.readied = 0
        # Products a refresh adds to the catalog (one added since it was loaded).
        self.later_products: list[Product] = []
        self.refreshes = 0

    async def ready(self) -> FakeRuntime:
        self.readied += 1
        if self.ready_error is not None:
            raise self.ready_error
        return self

    async def kafka_ping(self) -> None:
        if self.kafka_error is not None:
            raise self.kafka_error

    async def refresh_catalog_if_stale(self, min_age: float = 1.0) -> bool:
        self.refreshes += 1
        if not self.later_products:
            return False
        self.catalog = Catalog([*self.catalog.products(), *self.later_products])
        self.store.products = [product_view(p) for p in self.catalog.products()]
        return True


Sent = tuple[str, str, Any, list[tuple[str, bytes]]]


class FakeBus:
    """`Bus.enqueue`: records each send (topic, key, message, headers) and returns its ack,
    already resolved, or failed with `error`."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.error: Exception | None = None

    async def enqueue(self, sends: Iterable[Sent]) -> list[asyncio.Future[Any]]:
        futures: list[asyncio.Future[Any]] = []
        for send in sends:
            self.sent.append(send)
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            if self.error is not None:
                fut.set_exception(self.error)
            else:
                fut.set_result(SimpleNamespace(topic=send[0], partition=0, offset=len(self.sent) - 1))
            futures.append(fut)
        return futures

    async def send_raw(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]],
                       partition: int | None = None) -> Any:
        if self.error is not None:
            raise self.error
        self.sent.append((topic, (key or b"").decode(), value, headers))
        return SimpleNamespace(topic=topic, partition=1, offset=len(self.sent) - 1)

    def headers(self, index: int = 0) -> dict[str, str]:
        return {k: v.decode() for k, v in self.sent[index][3]}


class FakeWatchdog:
    def __init__(self) -> None:
        self.stalled: float | None = None
        self.asked: list[float] = []

    def recovery_stalled_for(self, now: float) -> float | None:
        self.asked.append(now)
        return self.stalled


@dataclass
class World:
    """One worker's API over fakes: the real `Api` (token verifier, rate limits, group commit)
    given a fake runtime, bus and watchdog."""

    settings: Settings = SETTINGS
    runtime: FakeRuntime = field(init=False)
    bus: FakeBus = field(default_factory=FakeBus)
    watchdog: FakeWatchdog = field(default_factory=FakeWatchdog)
    recovered: bool = True
    _api: Api | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.runtime = FakeRuntime(self.settings)

    @property
    def store(self) -> FakeStore:
        return self.runtime.store

    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = Api(
                self.settings, cast(Any, self.runtime), cast(Any, self.bus), cast(Any, self.watchdog),
                recovered=lambda: self.recovered,
            )
        return self._api


class _Sensors:
    """What `View.dispatch` tells Faust's sensors: nothing to record here."""

    def on_web_request_start(self, app: Any, request: Any, *, view: Any = None) -> None:
        return None

    def on_web_request_end(
        self, app: Any, request: Any, response: Any, state: Any, *, view: Any = None,
    ) -> None:
        return None


def application(api: Api, routes: Iterable[tuple[str, type[View]]] = ALL_ROUTES) -> web.Application:
    """The views behind the API's middleware, each route added as Faust's aiohttp driver adds
    it (`faust.web.drivers.aiohttp.Web.route`): every method the view implements, HEAD too,
    to one instance of a class of its own that holds `api` (as `web.register` makes it)."""
    app = web.Application(middlewares=[correlation_and_problems], client_max_size=BODY_LIMIT)
    faust_app = SimpleNamespace(sensors=_Sensors())
    for path, view in routes:
        cls = type(view.__name__, (view,), {"api": api})
        instance = cls(cast(Any, faust_app), cast(Any, None))

        async def handler(request: web.Request, instance: View = instance) -> web.StreamResponse:
            response: web.StreamResponse = await instance(request)
            return response

        for method in sorted(instance.get_methods()):
            app.router.add_route(method, path, handler)
    return app


Client = TestClient[web.Request, web.Application]


@contextlib.asynccontextmanager
async def serve(world: World, routes: Iterable[tuple[str, type[View]]] = ALL_ROUTES) -> AsyncIterator[Client]:
    """An in-process HTTP server of `world`'s API and a client of it."""
    async with TestClient(TestServer(application(world.api, routes))) as client:
        yield client


@contextlib.asynccontextmanager
async def serve_ws(
    settings: Settings = SETTINGS, runtime: FakeRuntime | None = None,
) -> AsyncIterator[tuple[Client, LiveEndpoint]]:
    """`/v1/ws` as `ws.register` adds it (no live feed: nothing reads Kafka)."""
    from orion_streams.web.auth import TokenVerifier

    endpoint = LiveEndpoint(settings, cast(Any, runtime or FakeRuntime(settings)), TokenVerifier(settings))
    app = web.Application(middlewares=[correlation_and_problems])
    app.router.add_get(WS_PATH, endpoint.websocket, allow_head=False)
    app.on_shutdown.append(endpoint.close_sockets)
    async with TestClient(TestServer(app)) as client:
        yield client, endpoint


async def problem(response: ClientResponse, status: int, *fields: str) -> dict[str, Any]:
    """The problem+json body of `response`, checked against problems.py's shape: the status,
    type and title agree, and exactly `fields` are named in `errors` (in any order)."""
    assert response.status == status, (response.status, await response.text())
    assert response.content_type == PROBLEM_JSON
    assert response.headers.get(CORRELATION_ID)
    body: dict[str, Any] = await response.json(content_type=PROBLEM_JSON)
    assert set(body) == {"type", "title", "status", "detail", "errors"}
    assert body["status"] == status
    assert body["type"] == "https://orion.dev/problems/" + body["title"].lower().replace(" ", "-")
    assert isinstance(body["detail"], str) and body["detail"]
    assert all(set(e) == {"field", "message"} and e["message"] for e in body["errors"])
    assert sorted(e["field"] for e in body["errors"]) == sorted(fields)
    return body


def order_body(*lines: tuple[str, int], token: str = "tok_ok", email: str = "alice@example.com") -> dict[str, Any]:
    return {
        "lines": [{"sku": sku, "quantity": q} for sku, q in (lines or (("SKU-001", 2),))],
        "payment": {"token": token}, "email": email,
    }
