"""The v1 HTTP API as Faust web views (see API.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

from aiohttp import web
from faust.web import View

from .. import metrics, records
from ..adapters.postgres import InvalidCursor
from ..agents import watchdog
from ..agents.common import enqueue
from ..app import app, orders_topic, runtime, settings, stock_requests_topic
from ..domain.errors import FieldError
from ..domain.orders import OrderStatus
from ..records import storable
from ..schemas import OrderListQuery, PlaceOrderQuery, StockListQuery, parse
from ..services import orders, ports
from ..services.admission import Refusal
from ..services.grouped import Grouped
from .admission import door
from .auth import Principal, TokenVerifier
from .identity import allow, authenticate, sees_all_orders
from .problems import ApiError, bad_request, not_found, unavailable, unprocessable
from .ratelimit import TokenBuckets

log = logging.getLogger("orion.web")
_verifier: TokenVerifier | None = None
order_limits = TokenBuckets(settings.order_rate_per_minute / 60.0, settings.order_burst)
service_order_limits = TokenBuckets(settings.service_order_rate_per_minute / 60.0, settings.service_order_burst)
# Orders accepted at about the same time are pre-recorded in one statement (group commit).
accepted: Grouped[ports.Accepted] = Grouped(lambda orders: runtime.store.record_accepted(orders))


def verifier() -> TokenVerifier:
    global _verifier
    if _verifier is None:
        _verifier = TokenVerifier(settings)
    return _verifier


async def principal_of(request: web.Request) -> Principal:
    return await authenticate(request, verifier())


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), content_type="application/json")


async def read_json(request: web.Request) -> Any:
    if request.content_type not in ("application/json", ""):
        raise ApiError(415, "Unsupported Media Type", "send application/json")
    raw = await request.read()
    try:
        body = records.parse_json(raw)
    except records.NotJson as exc:
        raise bad_request("body is nested too deeply" if exc.nested else f"body is not valid JSON: {exc}") from exc
    if not storable(body):
        raise unprocessable([FieldError("body", "text must not contain U+0000 or unpaired surrogates")])
    return body


def _headers(request: web.Request, principal: Principal) -> list[tuple[str, bytes]]:
    """Every event from HTTP carries who asked (actor and roles) and the correlation id."""
    return [
        ("correlation-id", request["correlation_id"].encode()),
        ("actor", principal.actor.encode()),
        ("actor-roles", ",".join(sorted(principal.roles)).encode()),
    ]


async def _send(topic: Any, key: str, message: Any, headers: list[tuple[str, bytes]]) -> None:
    """Send and wait for the broker's acks=all: a 202 means the event is in Kafka."""
    try:
        (fut,) = await enqueue([(topic, key, message, headers)])
        await asyncio.wait_for(fut, timeout=10)
    except Exception as exc:  # timeout or broker error: the client may retry safely
        raise unavailable(f"could not reach Kafka: {type(exc).__name__}") from exc


_TOPICS = {topic.get_topic_name(): topic for topic in (orders_topic, stock_requests_topic)}


def _sender(request: web.Request, principal: Principal) -> orders.Send:
    """How a use case sends its command: as this caller, with this request's correlation id."""
    headers = _headers(request, principal)

    async def send(topic: str, key: str, message: Any) -> None:
        await _send(_TOPICS[topic], key, message, headers)

    return send


async def _visible_order(principal: Principal, order_id: str) -> dict[str, Any]:
    """The order if the caller may see it; 404 otherwise, so ids of others never leak."""
    order = await runtime.store.get_order(order_id)
    if order is None or (not sees_all_orders(principal) and order["user_id"] != principal.subject):
        raise not_found(f"no order {order_id}")
    return order


async def _wait_decided(order_id: str, seconds: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + seconds
    delay = 0.01
    while True:
        order = await runtime.store.get_order(order_id)
        # Hold out for the payment outcome; RESERVED still counts as decided at the deadline.
        if order is not None and OrderStatus(order["status"]).is_settled:
            return order
        if time.monotonic() >= deadline:
            return order
        await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
        delay = min(delay * 1.5, 0.2)


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


@app.page("/v1/orders")
class OrdersView(View):
    async def post(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        refusal = door.verdict(time.monotonic())
        if refusal is not None and key is None:
            # Before anything else, even the token check: refusing must cost next to nothing.
            raise _refused(refusal)
        principal = await principal_of(request)
        allow(principal, "customer", "admin", scope="orders:write")
        service = "service" in principal.roles
        retry_after = (service_order_limits if service else order_limits).take(principal.subject)
        if retry_after > 0:
            rate, burst = (
                (settings.service_order_rate_per_minute, settings.service_order_burst) if service
                else (settings.order_rate_per_minute, settings.order_burst)
            )
            raise ApiError(
                429, "Too Many Requests", f"at most {rate:g} orders a minute (bursts of {burst})",
                headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
            )
        wait = parse(PlaceOrderQuery, request.query).wait
        body = await read_json(request)
        await runtime.ready()
        try:
            placement = await orders.place(
                body, principal.subject, key, refusal, runtime,
                runtime.store.find_by_idempotency_key, _sender(request, principal),
            )
        except orders.Busy as busy:
            raise _refused(busy.refusal) from busy
        if placement.accepted is not None:
            door.admitted()
            metrics.ORDERS_ACCEPTED.inc()
            try:
                await accepted.submit(placement.accepted)
            except Exception:  # the event is in Kafka; the projection will write the order anyway
                log.warning("could not pre-record order %s", placement.order_id, exc_info=True)
        return await self._reply(placement.order_id, wait)

    async def get(self, request: web.Request) -> web.Response:
        principal = await principal_of(request)
        allow(principal, scope="orders:read")
        query = parse(OrderListQuery, request.query)
        user_id: str | None = principal.subject
        if sees_all_orders(principal):
            user_id = query.user_id
        await runtime.ready()
        try:
            items, cursor = await runtime.store.list_orders(
                user_id=user_id, status=query.status, limit=query.limit, cursor=query.cursor
            )
        except InvalidCursor as exc:
            raise unprocessable([FieldError("cursor", str(exc))]) from exc
        return json_response({"items": items, "next_cursor": cursor})

    async def _reply(self, order_id: str, wait: float) -> web.Response:
        if wait > 0:
            order = await _wait_decided(order_id, wait)
            if order is not None and OrderStatus(order["status"]).is_decided:
                return json_response(order, 200)
        return _accepted(order_id)


@app.page("/v1/orders/{order_id}")
class OrderView(View):
    async def get(self, request: web.Request, order_id: str) -> web.Response:
        principal = await principal_of(request)
        allow(principal, scope="orders:read")
        await runtime.ready()
        return json_response(await _visible_order(principal, order_id))


@app.page("/v1/orders/{order_id}/events")
class OrderEventsView(View):
    async def get(self, request: web.Request, order_id: str) -> web.Response:
        principal = await principal_of(request)
        allow(principal, scope="orders:read")
        await runtime.ready()
        await _visible_order(principal, order_id)
        return json_response({"items": await runtime.store.order_events(order_id), "next_cursor": None})


@app.page("/v1/orders/{order_id}/cancel")
class CancelView(View):
    async def post(self, request: web.Request, order_id: str) -> web.Response:
        principal = await principal_of(request)
        allow(principal, scope="orders:write")
        await runtime.ready()
        status = await orders.cancel(await _visible_order(principal, order_id), _sender(request, principal))
        return json_response({"order_id": order_id, "status": status, "links": {"self": f"/v1/orders/{order_id}"}}, 202)


@app.page("/v1/orders/{order_id}/fulfil")
class FulfilView(View):
    async def post(self, request: web.Request, order_id: str) -> web.Response:
        principal = await principal_of(request)
        allow(principal, "admin", "service", scope="orders:fulfil")
        await runtime.ready()
        await orders.fulfil(await _visible_order(principal, order_id), _sender(request, principal))
        return json_response({"order_id": order_id, "links": {"self": f"/v1/orders/{order_id}"}}, 202)


@app.page("/v1/products")
class ProductsView(View):
    async def get(self, request: web.Request) -> web.Response:
        allow(await principal_of(request), scope="inventory:read")
        await runtime.ready()
        return json_response({"items": await runtime.store.list_products(), "next_cursor": None})


@app.page("/v1/products/{sku}")
class ProductView(View):
    async def get(self, request: web.Request, sku: str) -> web.Response:
        allow(await principal_of(request), scope="inventory:read")
        await runtime.ready()
        product = await runtime.store.get_product(sku)
        if product is None:
            raise not_found(f"no product {sku}")
        return json_response(product)


@app.page("/v1/inventory")
class InventoryListView(View):
    async def get(self, request: web.Request) -> web.Response:
        allow(await principal_of(request), "admin", "service", scope="inventory:read")
        query = parse(StockListQuery, request.query)
        await runtime.ready()
        try:
            items, cursor = await runtime.store.list_stock(limit=query.limit, cursor=query.cursor)
        except InvalidCursor as exc:
            raise unprocessable([FieldError("cursor", str(exc))]) from exc
        return json_response({"items": items, "next_cursor": cursor})


@app.page("/v1/inventory/{sku}")
class InventoryView(View):
    async def get(self, request: web.Request, sku: str) -> web.Response:
        allow(await principal_of(request), scope="inventory:read")
        await runtime.ready()
        level = await runtime.store.get_stock(sku)
        if level is None:
            raise not_found(f"no stock record for {sku}")
        return json_response(level)


@app.page("/v1/inventory/{sku}/adjustments")
class AdjustmentsView(View):
    async def post(self, request: web.Request, sku: str) -> web.Response:
        principal = await principal_of(request)
        allow(principal, "admin", "service", scope="inventory:write")
        body = await read_json(request)
        await runtime.ready()
        result = await orders.adjust_stock(sku, body, runtime.catalog, runtime.store, _sender(request, principal))
        return json_response(result, 200 if result["status"] == "applied" else 202)


@app.page("/health")
class HealthView(View):
    """Liveness: 503 when the worker is alive but stuck, so an orchestrator restarts it."""

    async def get(self, request: web.Request) -> web.Response:
        stalled = watchdog.recovery_stalled_for(time.monotonic())
        if stalled is not None:
            raise ApiError(503, "Service Unavailable", (
                f"worker {settings.worker_id} is stuck: table recovery unfinished for {stalled:.0f} s "
                "(ORION_RECOVERY_STALL); restart it"
            ))
        return json_response({"status": "ok", "worker": settings.worker_id})


@app.page("/ready")
class ReadyView(View):
    async def get(self, request: web.Request) -> web.Response:
        missing = []
        if not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            missing.append("table recovery")
        try:
            await runtime.ready()
            await asyncio.wait_for(runtime.store.ping(), timeout=2)
        except Exception as exc:
            missing.append(f"postgresql ({type(exc).__name__})")
        try:
            await asyncio.wait_for(runtime.kafka_ping(), timeout=3)
        except Exception as exc:
            missing.append(f"kafka ({type(exc).__name__})")
        admission = door.snapshot(time.monotonic())
        if missing:
            return json_response({"status": "unavailable", "missing": missing, "admission": admission}, 503)
        return json_response({"status": "ready", "admission": admission})


@app.page("/metrics")
class MetricsView(View):
    async def get(self, request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})
