"""The order saga agent: the single writer of saga state, keyed by order id."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import faust
import mode
from faust.types import TP

from .. import logs, metrics, records, tracing
from .. import topics as t
from ..app import (
    app,
    order_audit_topic,
    order_events_topic,
    order_status_topic,
    orders_topic,
    payment_requests_topic,
    runtime,
    saga_inputs,
    settings,
    stock_requests_topic,
)
from ..domain import commands as c
from ..domain import events as e
from ..domain import saga as domain
from ..domain.errors import ValidationFailed
from ..tables import sagas
from .common import (
    ACTOR_HEADER,
    CORRELATION_HEADER,
    ROLES_HEADER,
    UNIDENTIFIED,
    Outbox,
    dead_letter,
    handle_in_batches,
    header,
    key_text,
    make_headers,
    now,
    partition_for,
    send_all,
)

log = logging.getLogger("orion.saga")

# Sagas for which this worker already asked the payment to time out; cleared as they move.
_timeouts_sent: set[str] = set()


def _route(message: domain.SagaOutput) -> tuple[faust.TopicT, str]:
    match message:
        case c.ReserveLine() | c.ReleaseLine() | c.CommitLine():
            return stock_requests_topic, message.sku
        case c.AuthorizePayment():
            return payment_requests_topic, message.order_id
        case e.OrderStatusChanged():
            return order_status_topic, message.order_id
        case e.AuditEntry():
            return order_audit_topic, message.order_id
    raise TypeError(f"no route for {type(message).__name__}")


@app.agent(saga_inputs, concurrency=1)
async def order_saga(stream: faust.StreamT[bytes]) -> None:
    """Place, reserve, pay, confirm, compensate: events in order, a batch at a time."""
    await runtime.ready()
    await handle_in_batches(stream, handle_event, sagas, what="order saga")


async def handle_event(event: faust.EventT[bytes], outbox: Outbox) -> None:
    order_id = key_text(event)
    try:
        message = records.decode(event.value, runtime.catalog)
    except records.BadRecord as exc:
        # A product added since the catalog was loaded is not a bad record: look again.
        if "unknown SKU" not in str(exc) or not await runtime.refresh_catalog_if_stale():
            await dead_letter(event, str(exc), kind="bad_record")
            return
        try:
            message = records.decode(event.value, runtime.catalog)
        except records.BadRecord as again:
            await dead_letter(event, str(again), kind="bad_record")
            return
    correlation_id = header(event, CORRELATION_HEADER)
    actor = header(event, ACTOR_HEADER)
    roles = header(event, ROLES_HEADER)
    if getattr(message, "order_id", None) != order_id:
        await dead_letter(event, "the message key must equal its order_id", kind="wrong_key")
        return
    expected = partition_for(order_id, settings.partitions)
    if event.message.partition != expected:
        # A producer used another partitioner (kcat's default is CRC32): move the message
        # to where murmur2 puts the order, so the saga and the replies share a partition.
        log.info("re-partitioning %s from %d to %d", order_id, event.message.partition, expected)
        fut = await orders_topic.send(
            key=order_id.encode(), value=event.value, partition=expected,
            headers=make_headers(correlation_id, actor, roles),
        )
        await fut
        return

    current = sagas.get(order_id)
    now_ = now()
    if isinstance(message, e.OrderPlaced):
        if current is not None:
            log.info("duplicate OrderPlaced for %s ignored", order_id)
            return
        try:
            saga, outputs = domain.start(message, runtime.catalog, now_)
        except ValidationFailed as exc:
            await dead_letter(event, f"invalid order: {exc}", kind="invalid_order")
            return
        correlation_id = correlation_id or message.event_id
        if not actor:  # a producer that identified nobody is recorded as such
            actor, roles = UNIDENTIFIED, None
    else:
        if current is None:
            await dead_letter(event, f"no order {order_id} is known to the saga", kind="unknown_order")
            return
        state = current
        saga, outputs = domain.handle(
            records.saga_from_value(state["saga"]), message, now_, settings.payment_timeout
        )
        correlation_id = correlation_id or state.get("correlation_id")
        if not actor:
            actor, roles = state.get("actor"), state.get("actor_roles")
    logs.bind(order_id=order_id, correlation_id=correlation_id)
    if not outputs:
        return
    headers = make_headers(correlation_id, actor, roles)
    for m in outputs:
        outbox.send(*_route(m), m, headers)
        if isinstance(m, e.OrderStatusChanged):
            _observe(m, saga, now_)
    sagas.put(event, order_id, {
        "saga": records.saga_to_value(saga), "correlation_id": correlation_id, "actor": actor, "actor_roles": roles,
    })
    if saga.status.value != "RESERVED":
        _timeouts_sent.discard(order_id)


# Statuses counted in orion_orders_total, and those that decide an order.
_COUNTED = frozenset({"CONFIRMED", "FULFILLED", "REJECTED", "PAYMENT_FAILED", "CANCELLED"})
_DECISIONS = frozenset({"CONFIRMED", "REJECTED", "PAYMENT_FAILED"})


def _observe(change: e.OrderStatusChanged, saga: domain.OrderSaga, now_: domain.Clock) -> None:
    """Log and count a status change; the saga is the one place every order passes."""
    status = change.status.value
    if change.previous is None:
        metrics.ORDERS_PLACED.inc()
        log.info("order placed: %d line(s); reserving", len(saga.lines))
    elif change.failure_reason:
        log.info("order %s -> %s: %s", change.previous.value, status, change.failure_reason)
    else:
        log.info("order %s -> %s", change.previous.value, status)
    if status in _COUNTED:
        metrics.ORDERS.labels(status).inc()
    if status in _DECISIONS:
        elapsed = max(0.0, now_.epoch - _epoch(saga.created_at))
        metrics.ORDER_DECISION.labels(status).observe(elapsed)
        if status == "CONFIRMED":
            metrics.ORDER_CONFIRMATION.observe(elapsed)


def _active(order_id: str) -> bool:
    partition = partition_for(order_id, settings.partitions)
    return TP(t.ORDERS.name, partition) in app.assignor.assigned_actives()


@app.service
class RuntimeLifecycle(mode.Service):
    """Closes the database pool, the payment client and the admin client on shutdown, drops
    this process's live gauges from a shared metrics directory and flushes buffered spans."""

    async def on_stop(self) -> None:
        await runtime.close()
        metrics.process_exited()
        await asyncio.to_thread(tracing.shutdown)


@app.task
async def install_debug_signal() -> None:
    from ..debug import install

    install()


@app.timer(interval=30.0)
async def refresh_catalog() -> None:
    """Pick up price and product changes made in PostgreSQL."""
    try:
        await (await runtime.ready()).refresh_catalog()
    except Exception as exc:  # the database may be away; the next tick tries again
        log.warning("catalog refresh failed: %s", exc)


# A saga waiting this long for a SKU owner's answer asks again. Reservation is idempotent
# (the owner answers from the order's hold), so asking twice is harmless, and a request or
# answer lost to a crash or a rebalance only delays the order instead of stranding it.
# The wait doubles with each attempt so a backlog is not flooded with repeats.
RESERVE_RETRY_AFTER = 10.0
_reserve_asked: dict[str, tuple[float, int]] = {}


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@app.timer(interval=1.0)
async def chase_overdue_sagas() -> None:
    """Time out payments that never answered (the saga, not the gateway, owns the deadline)
    and ask again for reservations that never answered."""
    now_ = now()
    sends: list[Any] = []
    for order_id, state in list(sagas.items()):
        if not state or not _active(order_id):
            continue
        value = state["saga"]
        headers = make_headers(state.get("correlation_id"), "service:orion-saga", "service")
        if value["status"] == "RESERVED" and value.get("payment_deadline") is not None:
            if value["payment_deadline"] <= now_.epoch and order_id not in _timeouts_sent:
                sends.append((order_events_topic, order_id, e.PaymentTimedOut(order_id), headers))
                _timeouts_sent.add(order_id)
        elif value["status"] == "PENDING":
            last, attempts = _reserve_asked.get(order_id, (0.0, 0))
            asked = max(last, _epoch(value["updated_at"]))
            if now_.epoch - asked >= RESERVE_RETRY_AFTER * 2**attempts:
                saga = records.saga_from_value(value)
                for line in saga.lines:
                    if line.state is domain.LineState.PENDING:
                        command = c.ReserveLine(order_id, line.sku, line.quantity)
                        sends.append((stock_requests_topic, line.sku, command, headers))
                log.warning("order %s waited %.0fs for stock answers; asking again", order_id, now_.epoch - asked)
                _reserve_asked[order_id] = (now_.epoch, attempts + 1)
        else:
            _reserve_asked.pop(order_id, None)
    if sends:
        await send_all(sends)
