"""The v1 HTTP API as Faust web views (see API.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from faust.web import View

from .. import metrics, records
from ..adapters.postgres import InvalidCursor
from ..domain.errors import FieldError
from ..domain.orders import OrderStatus
from ..records import storable
from ..schemas import OrderListQuery, PlaceOrderQuery, StockListQuery, parse
from ..services import orders, ports
from ..services.admission import Refusal
from ..services.grouped import Grouped
from .auth import Principal, TokenVerifier
from .identity import allow, authenticate, sees_all_orders
from .middleware import CORRELATION_KEY
from .problems import ApiError, bad_request, not_found, unavailable, unprocessable
from .ratelimit import TokenBuckets

if TYPE_CHECKING:
    from ..agents.common import Bus
    from ..agents.watchdog import Watchdog
    from ..bootstrap import Runtime
    from ..config import Settings

log = logging.getLogger("orion.web")


class Api:
    """What the HTTP API is given (settings, the shared resources, the worker's bus and
    watchdog, whether its tables are recovered) and what it keeps: the token verifier, the
    rate limits and the group commit of accepted orders."""

    def __init__(
        self, settings: Settings, runtime: Runtime, bus: Bus, watchdog: Watchdog, recovered: Callable[[], bool],
    ) -> None:
        self.settings, self.runtime, self.bus, self.watchdog, self.recovered = (
            settings, runtime, bus, watchdog, recovered)
        # A bad JWT configuration stops the worker as it is built, not at every request.
        self.verifier = TokenVerifier(settings)
        self.door = runtime.admission
        self.order_limits = TokenBuckets(settings.order_rate_per_minute / 60.0, settings.order_burst)
        self.service_order_limits = TokenBuckets(
            settings.service_order_rate_per_minute / 60.0, settings.service_order_burst)
        # Orders accepted at about the same time are pre-recorded in one statement (group commit).
        self.accepted: Grouped[ports.Accepted] = Grouped(lambda orders: runtime.store.record_accepted(orders))

    async def principal_of(self, request: web.Request) -> Principal:
        return await authenticate(request, self.verifier, self.runtime)

    def sender(self, request: web.Request, principal: Principal) -> orders.Send:
        """How a use case sends its command: as this caller, with this request's correlation id,
        waiting for the broker's acks=all (a 202 means the event is in Kafka)."""
        headers = _headers(request, principal)

        async def send(topic: str, key: str, message: Any) -> None:
            try:
                (fut,) = await self.bus.enqueue([(topic, key, message, headers)])
                await asyncio.wait_for(fut, timeout=10)
            except Exception as exc:  # timeout or broker error: the client may retry safely
                raise unavailable(f"could not reach Kafka: {type(exc).__name__}") from exc

        return send

    async def visible_order(self, principal: Principal, order_id: str) -> dict[str, Any]:
        """The order if the caller may see it; 404 otherwise, so ids of others never leak."""
        order = await self.runtime.store.get_order(order_id)
        if order is None or (not sees_all_orders(principal) and order["user_id"] != principal.subject):
            raise not_found(f"no order {order_id}")
        return order

    async def wait_decided(self, order_id: str, seconds: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + seconds
        delay = 0.01
        while True:
            order = await self.runtime.store.get_order(order_id)
            # Hold out for the payment outcome; RESERVED still counts as decided at the deadline.
            if order is not None and OrderStatus(order["status"]).is_settled:
                return order
            if time.monotonic() >= deadline:
                return order
            await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
            delay = min(delay * 1.5, 0.2)


class ApiView(View):
    """A view of the API; `web.register` gives each its `Api`."""

    api: Api


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), content_type="application/json")


async def read_json(request: web.Request) -> Any:
    # No Content-Type at all is read as JSON (aiohttp would call it application/octet-stream).
    if "Content-Type" in request.headers and request.content_type != "application/json":
        raise ApiError(415, "Unsupported Media Type", "send application/json")
    raw = await request.read()
    try:
        body = records.parse_json(raw)
    except records.NotJson as exc:
        raise bad_request("body is nested too deeply" if exc.nested else f"body is not valid JSON: {exc}") from exc
    if not storable(body):
        raise unprocessable([FieldError("body", "text must not contain U+0000 or unpaired surrogates")])
    return body


async def paged(listing: Awaitable[tuple[list[dict[str, Any]], str | None]]) -> web.Response:
    """A page of a keyset-paged list as `{"items", "next_cursor"}`; a cursor this server did
    not issue is a 422 on `cursor`."""
    try:
        items, cursor = await listing
    except InvalidCursor as exc:
        raise unprocessable([FieldError("cursor", str(exc))]) from exc
    return json_response({"items": items, "next_cursor": cursor})


def _headers(request: web.Request, principal: Principal) -> list[tuple[str, bytes]]:
    """Every event from HTTP carries who asked (actor and roles) and the correlation id."""
    return [
        ("correlation-id", request[CORRELATION_KEY].encode()),
        ("actor", principal.actor.encode()),
        ("actor-roles", ",".join(sorted(principal.roles)).encode()),
    ]




def _refused(refusal: Refusal) -> ApiError:
    """503 from admission control: nothing was written or sent; ask again after Retry-After."""
    metrics.ORDERS_REFUSED.labels(refusal.reason).inc()
    return ApiError(
        503, "Service Unavailable", f"not taking new orders now: {refusal.detail}; retry after {refusal.retry_after}s",
        headers={"Retry-After": str(refusal.retry_after)},
    )


def _accepted(order_id: str) -> web.Response:
    return json_response(
        {"order_id": order_id, "status": "PENDING", "links": {"self": f"/v1/orders/{order_id}"}}, 202
    )


class OrdersView(ApiView):
    async def post(self, request: web.Request) -> web.Response:
        api = self.api
        key = request.headers.get("Idempotency-Key")
        refusal = api.door.verdict(time.monotonic())
        if refusal is not None and key is None:
            # Before anything else, even the token check: refusing must cost next to nothing.
            raise _refused(refusal)
        principal = await api.principal_of(request)
        allow(principal, "customer", "admin", scope="orders:write")
        service = "service" in principal.roles
        retry_after = (api.service_order_limits if service else api.order_limits).take(principal.subject)
        if retry_after > 0:
            rate, burst = (
                (api.settings.service_order_rate_per_minute, api.settings.service_order_burst) if service
                else (api.settings.order_rate_per_minute, api.settings.order_burst)
            )
            raise ApiError(
                429, "Too Many Requests", f"at most {rate:g} orders a minute (bursts of {burst})",
                headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
            )
        wait = parse(PlaceOrderQuery, request.query).wait
        body = await read_json(request)
        await api.runtime.ready()
        try:
            placement = await orders.place(
                body, principal.subject, key, refusal, api.runtime,
                api.runtime.store.find_by_idempotency_key, api.sender(request, principal),
            )
        except orders.Busy as busy:
            raise _refused(busy.refusal) from busy
        if placement.accepted is not None:
            api.door.admitted()
            metrics.ORDERS_ACCEPTED.inc()
            try:
                await api.accepted.submit(placement.accepted)
            except Exception:  # the event is in Kafka; the projection will write the order anyway
                log.warning("could not pre-record order %s", placement.order_id, exc_info=True)
        return await self._reply(placement.order_id, wait)

    async def get(self, request: web.Request) -> web.Response:
        api = self.api
        principal = await api.principal_of(request)
        allow(principal, scope="orders:read")
        query = parse(OrderListQuery, request.query)
        user_id: str | None = principal.subject
        if sees_all_orders(principal):
            user_id = query.user_id
        await api.runtime.ready()
        return await paged(api.runtime.store.list_orders(
            user_id=user_id, status=query.status, limit=query.limit, cursor=query.cursor))

    async def _reply(self, order_id: str, wait: float) -> web.Response:
        if wait > 0:
            order = await self.api.wait_decided(order_id, wait)
            if order is not None and OrderStatus(order["status"]).is_decided:
                return json_response(order, 200)
        return _accepted(order_id)


class OrderView(ApiView):
    async def get(self, request: web.Request, order_id: str) -> web.Response:
        api = self.api
        principal = await api.principal_of(request)
        allow(principal, scope="orders:read")
        await api.runtime.ready()
        return json_response(await api.visible_order(principal, order_id))


class OrderEventsView(ApiView):
    async def get(self, request: web.Request, order_id: str) -> web.Response:
        api = self.api
        principal = await api.principal_of(request)
        allow(principal, scope="orders:read")
        await api.runtime.ready()
        await api.visible_order(principal, order_id)
        return json_response({"items": await api.runtime.store.order_events(order_id), "next_cursor": None})


class CancelView(ApiView):
    async def post(self, request: web.Request, order_id: str) -> web.Response:
        api = self.api
        principal = await api.principal_of(request)
        allow(principal, scope="orders:write")
        await api.runtime.ready()
        status = await orders.cancel(await api.visible_order(principal, order_id), api.sender(request, principal))
        return json_response({"order_id": order_id, "status": status, "links": {"self": f"/v1/orders/{order_id}"}}, 202)


class FulfilView(ApiView):
    async def post(self, request: web.Request, order_id: str) -> web.Response:
        api = self.api
        principal = await api.principal_of(request)
        allow(principal, "admin", "service", scope="orders:fulfil")
        await api.runtime.ready()
        await orders.fulfil(await api.visible_order(principal, order_id), api.sender(request, principal))
        return json_response({"order_id": order_id, "links": {"self": f"/v1/orders/{order_id}"}}, 202)


class ProductsView(ApiView):
    async def get(self, request: web.Request) -> web.Response:
        api = self.api
        allow(await api.principal_of(request), scope="inventory:read")
        await api.runtime.ready()
        return json_response({"items": await api.runtime.store.list_products(), "next_cursor": None})


class ProductView(ApiView):
    async def get(self, request: web.Request, sku: str) -> web.Response:
        api = self.api
        allow(await api.principal_of(request), scope="inventory:read")
        await api.runtime.ready()
        product = await api.runtime.store.get_product(sku)
        if product is None:
            raise not_found(f"no product {sku}")
        return json_response(product)


class InventoryListView(ApiView):
    async def get(self, request: web.Request) -> web.Response:
        api = self.api
        allow(await api.principal_of(request), "admin", "service", scope="inventory:read")
        query = parse(StockListQuery, request.query)
        await api.runtime.ready()
        return await paged(api.runtime.store.list_stock(limit=query.limit, cursor=query.cursor))


class InventoryView(ApiView):
    async def get(self, request: web.Request, sku: str) -> web.Response:
        api = self.api
        allow(await api.principal_of(request), scope="inventory:read")
        await api.runtime.ready()
        level = await api.runtime.store.get_stock(sku)
        if level is None:
            raise not_found(f"no stock record for {sku}")
        return json_response(level)


class AdjustmentsView(ApiView):
    async def post(self, request: web.Request, sku: str) -> web.Response:
        api = self.api
        principal = await api.principal_of(request)
        allow(principal, "admin", "service", scope="inventory:write")
        body = await read_json(request)
        await api.runtime.ready()
        result = await orders.adjust_stock(sku, body, api.runtime, api.runtime.store, api.sender(request, principal))
        return json_response(result, 200 if result["status"] == "applied" else 202)


class HealthView(ApiView):
    """Liveness: 503 when the worker is alive but stuck, so an orchestrator restarts it."""

    async def get(self, request: web.Request) -> web.Response:
        api = self.api
        stalled = api.watchdog.recovery_stalled_for(time.monotonic())
        if stalled is not None:
            raise ApiError(503, "Service Unavailable", (
                f"worker {api.settings.worker_id} is stuck: table recovery unfinished for {stalled:.0f} s "
                "(ORION_RECOVERY_STALL); restart it"
            ))
        return json_response({"status": "ok", "worker": api.settings.worker_id})


class ReadyView(ApiView):
    async def get(self, request: web.Request) -> web.Response:
        api = self.api
        missing = []
        if not api.recovered():
            missing.append("table recovery")
        try:
            await api.runtime.ready()
            await asyncio.wait_for(api.runtime.store.ping(), timeout=2)
        except Exception as exc:
            missing.append(f"postgresql ({type(exc).__name__})")
        try:
            await asyncio.wait_for(api.runtime.kafka_ping(), timeout=3)
        except Exception as exc:
            missing.append(f"kafka ({type(exc).__name__})")
        admission = api.door.snapshot(time.monotonic())
        if missing:
            return json_response({"status": "unavailable", "missing": missing, "admission": admission}, 503)
        return json_response({"status": "ready", "admission": admission})


class MetricsView(ApiView):
    async def get(self, request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})


# The views and their paths, as `web.register` adds them.
ROUTES: tuple[tuple[str, type[ApiView]], ...] = (
    ("/v1/orders", OrdersView),
    ("/v1/orders/{order_id}", OrderView),
    ("/v1/orders/{order_id}/events", OrderEventsView),
    ("/v1/orders/{order_id}/cancel", CancelView),
    ("/v1/orders/{order_id}/fulfil", FulfilView),
    ("/v1/products", ProductsView),
    ("/v1/products/{sku}", ProductView),
    ("/v1/inventory", InventoryListView),
    ("/v1/inventory/{sku}", InventoryView),
    ("/v1/inventory/{sku}/adjustments", AdjustmentsView),
    ("/health", HealthView),
    ("/ready", ReadyView),
    ("/metrics", MetricsView),
)
