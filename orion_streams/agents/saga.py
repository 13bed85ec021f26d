"""The order saga agent: the single writer of saga state, keyed by order id.

Besides applying events, the agent keeps two structures for the orders of its partitions,
both rebuilt from the table when partitions are assigned: the requests still waiting for
an answer (asked again only on evidence that the answer was lost, see
services/outstanding.py) and the finished orders to forget after the retention.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import faust
import orjson

from .. import logs, metrics, records
from .. import topics as t
from ..domain import commands as c
from ..domain import events as e
from ..domain import saga as domain
from ..domain.errors import ValidationFailed
from ..domain.orders import OrderStatus
from ..domain.values import evolve
from ..services.outstanding import OutstandingRequests
from ..services.payment_timing import PaymentTiming
from ..services.retirement import RetirementQueue
from .common import (
    ACTOR_HEADER,
    CORRELATION_HEADER,
    ROLES_HEADER,
    UNIDENTIFIED,
    Assignment,
    Bus,
    Outbox,
    dropped_headers,
    handle_in_batches,
    header,
    key_text,
    make_headers,
    now,
    partition_for,
    until_done,
)

if TYPE_CHECKING:
    from ..app import Orion
    from ..bootstrap import Runtime
    from ..config import Settings
    from ..tables import DurableTable

log = logging.getLogger("orion.saga")


def _route(message: domain.SagaOutput) -> tuple[str, str]:
    match message:
        case c.ReserveLine() | c.ReleaseLine() | c.CommitLine():
            return t.STOCK_REQUESTS.name, message.sku
        case c.AuthorizePayment() | c.VoidPayment():
            return t.PAYMENT_REQUESTS.name, message.order_id
        case e.OrderStatusChanged():
            return t.ORDER_STATUS.name, message.order_id
        case e.AuditEntry():
            return t.ORDER_AUDIT.name, message.order_id
    raise TypeError(f"no route for {type(message).__name__}")


def _request_key(request: domain.Request) -> Hashable:
    return (request.order_id, type(request).__name__, getattr(request, "sku", ""))


def _audit_with_status(outputs: list[domain.SagaOutput]) -> list[domain.SagaOutput]:
    """A step's audit entries ride on its last status change, one record instead of one
    each; a step that changes no status sends its entries on order-audit."""
    changes = [i for i, m in enumerate(outputs) if isinstance(m, e.OrderStatusChanged)]
    if not changes:
        return outputs
    last = outputs[changes[-1]]
    assert isinstance(last, e.OrderStatusChanged)
    change = evolve(last, audit=tuple(m for m in outputs if isinstance(m, e.AuditEntry)))
    return [change if m is last else m for m in outputs if not isinstance(m, e.AuditEntry)]


# Statuses counted in orion_orders_total, and those that decide an order.
_COUNTED = frozenset({"CONFIRMED", "FULFILLED", "REJECTED", "PAYMENT_FAILED", "CANCELLED"})
_DECISIONS = frozenset({"CONFIRMED", "REJECTED", "PAYMENT_FAILED"})


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class SagaAgent:
    """The saga's handler and housekeeping: the single writer of the `sagas` table.

    Besides the table it keeps, for the orders of this worker's partitions, the requests
    still waiting for an answer and the finished orders to forget (rebuilt from the table
    when partitions are assigned)."""

    def __init__(
        self, settings: Settings, runtime: Runtime, sagas: DurableTable, bus: Bus, assignment: Assignment,
    ) -> None:
        self.settings, self.runtime, self.sagas, self.bus, self.assignment = settings, runtime, sagas, bus, assignment
        # Requests of this worker's orders still waiting for an answer, and finished orders to forget.
        self.waiting = OutstandingRequests(backoff=1.0, max_backoff=300.0)
        self.retiring = RetirementQueue(settings.order_retention)
        # Whether an order's payment is asked for alongside its reservations.
        self.timing = PaymentTiming()
        # The partitions whose orders `waiting` and `retiring` cover.
        self._tracked: set[int] = set()

    def _send_request(self, outbox: Outbox, request: domain.Request, headers: list[tuple[str, bytes]]) -> None:
        """Send a request and, once the broker has it, wait for its answer."""
        key, order_id = _request_key(request), request.order_id
        partition = partition_for(order_id, self.settings.partitions)

        def sent(metadata: Any) -> None:
            self.waiting.sent(key, order_id, (metadata.topic, metadata.partition), metadata.offset, partition, time.monotonic())

        outbox.send(*_route(request), request, headers, on_sent=sent)

    async def handle_event(self, event: Any, outbox: Outbox) -> None:
        order_id = key_text(event)
        try:
            message = records.decode(event.value, self.runtime.catalog)
        except records.BadRecord as exc:
            # A product added since the catalog was loaded is not a bad record: look again.
            if not isinstance(exc, records.UnknownSku) or not await self.runtime.refresh_catalog_if_stale():
                await self.bus.dead_letter(event, str(exc), kind="bad_record")
                return
            try:
                message = records.decode(event.value, self.runtime.catalog)
            except records.BadRecord as again:
                await self.bus.dead_letter(event, str(again), kind="bad_record")
                return
        correlation_id = header(event, CORRELATION_HEADER)
        actor = header(event, ACTOR_HEADER)
        roles = header(event, ROLES_HEADER)
        if getattr(message, "order_id", None) != order_id:
            await self.bus.dead_letter(event, "the message key must equal its order_id", kind="wrong_key")
            return
        expected = partition_for(order_id, self.settings.partitions)
        if event.message.partition != expected:
            # A producer used another partitioner (kcat's default is CRC32): move the message
            # to where murmur2 puts the order, so the saga and the replies share a partition.
            log.info("re-partitioning %s from %d to %d", order_id, event.message.partition, expected)
            raw = event.value if isinstance(event.value, bytes) else orjson.dumps(event.value)
            await self.bus.send_raw(
                t.ORDERS.name, order_id.encode(), raw, make_headers(correlation_id, actor, roles), partition=expected,
            )
            return

        current = self.sagas.get(order_id)
        now_ = now()
        if isinstance(message, e.OrderPlaced):
            if current is not None:
                log.info("duplicate OrderPlaced for %s ignored", order_id)
                return
            if self._old(event, message, now_.epoch) and await until_done(
                lambda: self.runtime.store.order_started(order_id), f"looking up order {order_id}"
            ):
                # Older than half the retention: its saga may have been retired already.
                log.info("OrderPlaced for %s repeats an order decided before; ignored", order_id)
                return
            pay_now = self.settings.pay_with_reservation and self.timing.pay_now(
                ((line.sku, line.quantity) for line in message.lines), time.monotonic()
            )
            try:
                saga, outputs = domain.start(message, self.runtime.catalog, now_, pay_now=pay_now)
            except ValidationFailed as exc:
                await self.bus.dead_letter(event, f"invalid order: {exc}", kind="invalid_order")
                return
            correlation_id = correlation_id or message.event_id
            if not actor:  # a producer that identified nobody is recorded as such
                actor, roles = UNIDENTIFIED, None
            if dropped := dropped_headers(event):
                # Unsafe identity headers were replaced (the event id) or dropped: say so.
                outputs = [
                    evolve(m, data={**m.data, "headers_dropped": dropped}) if isinstance(m, e.AuditEntry) and m.kind == "OrderPlaced"
                    else m for m in outputs
                ]
        else:
            if isinstance(message, e.LineRejected):
                self.timing.rejected(message.sku, message.available, time.monotonic())
            elif isinstance(message, e.LineReserved):
                self.timing.reserved(message.sku)
            if current is None:
                await self._for_unknown_order(event, message, outbox)
                return
            state = current
            saga, outputs = domain.handle(records.saga_from_value(state["saga"]), message, now_)
            correlation_id = correlation_id or state.get("correlation_id")
            if not actor:
                actor, roles = state.get("actor"), state.get("actor_roles")
        logs.bind(order_id=order_id, correlation_id=correlation_id)
        if not outputs:
            return
        outputs = _audit_with_status(outputs)
        headers = make_headers(correlation_id, actor, roles)
        for m in outputs:
            if isinstance(m, domain.Request):
                self._send_request(outbox, m, headers)
            else:
                outbox.send(*_route(m), m, headers)
            if isinstance(m, e.OrderStatusChanged):
                self._observe(m, saga, now_)
        self.sagas.put(event, order_id, {
            "saga": records.saga_to_value(saga), "correlation_id": correlation_id, "actor": actor, "actor_roles": roles,
        })
        self.waiting.keep_only(order_id, [_request_key(r) for r in domain.outstanding(saga)])
        if domain.retirable(saga):
            self.retiring.ended(order_id, now_.epoch)

    def _old(self, event: Any, placed: e.OrderPlaced, now_epoch: float) -> bool:
        """Whether an OrderPlaced may repeat an order whose saga was already retired."""
        horizon = now_epoch - self.settings.order_retention / 2
        stamp = event.message.timestamp
        if stamp is not None and stamp < horizon:
            return True
        return bool(placed.placed_at) and _epoch(placed.placed_at) < horizon

    async def _for_unknown_order(self, event: Any, message: Any, outbox: Outbox) -> None:
        """An answer for an order this worker holds no saga for: retired after the retention,
        so a repeat, or one its OrderPlaced has not reached yet. Units held for a finished (or
        never known) order go back; other answers change nothing."""
        match message:
            case e.LineReserved():
                status = await until_done(lambda: self.runtime.store.order_status(message.order_id), "looking up an order")
                if status is not None and not OrderStatus(status).is_terminal:
                    # In flight: after a takeover the dead worker's answer (order-events) can come
                    # before its OrderPlaced (orders). Giving the units back now would leave the
                    # order, once its saga starts and is answered "held", confirmed on nothing.
                    log.info("units of %s held for order %s, not seen yet (%s): kept", message.sku, message.order_id, status)
                    return
                log.warning("units of %s held for finished order %s: giving them back", message.sku, message.order_id)
                outbox.send(t.STOCK_REQUESTS.name, message.sku, c.ReleaseLine(message.order_id, message.sku),
                            make_headers(header(event, CORRELATION_HEADER), "service:orion-saga", "service"))
            case (e.LineRejected() | e.LineReleased() | e.LineCommitted() | e.PaymentDeclined() | e.PaymentTimedOut()
                  | e.PaymentVoided() | e.PaymentVoidFailed()):
                log.info("%s for finished order %s: nothing to do", type(message).__name__, message.order_id)
            case _:
                await self.bus.dead_letter(event, f"no order {message.order_id} is known to the saga", kind="unknown_order")

    def _observe(self, change: e.OrderStatusChanged, saga: domain.OrderSaga, now_: domain.Clock) -> None:
        """Log and count a status change; the saga is the one place every order passes."""
        status = change.status.value
        if change.previous is None:
            metrics.ORDERS_PLACED.inc()
            logs.order_info(log, "order placed: %d line(s); reserving", len(saga.lines))
        elif change.failure_reason:
            logs.order_info(log, "order %s -> %s: %s", change.previous.value, status, change.failure_reason)
        else:
            logs.order_info(log, "order %s -> %s", change.previous.value, status)
        if status in _COUNTED:
            metrics.labelled(metrics.ORDERS, status).inc()
        if status in _DECISIONS:
            self.runtime.admission.decided(time.monotonic())
            elapsed = max(0.0, now_.epoch - _epoch(saga.created_at))
            metrics.labelled(metrics.ORDER_DECISION, status).observe(elapsed)
            if status == "CONFIRMED":
                metrics.ORDER_CONFIRMATION.observe(elapsed)

    # -- housekeeping: adopting partitions, lost requests, retirement

    async def housekeeping(self, outbox: Outbox) -> None:
        """Once a second, in the agent's own turn: follow the assignment, ask again for what
        was lost, forget what is finished. Costs in proportion to what moved or is due."""
        owned = self.assignment.owned(t.ORDERS.name)
        if owned is None:
            return
        gone, gained = self._tracked - owned, owned - self._tracked
        if gone:
            self.waiting.forget_reply_partitions(gone)
        if gained:
            await self._adopt(gained)
        self._tracked = owned
        await self._chase_lost(outbox)
        self._retire()

    async def _adopt(self, partitions: set[int]) -> None:
        """Orders of newly assigned partitions: register what they wait for (each request lies
        below its topic's current end offset) and when the finished ones may be forgotten.
        One pass over the recovered table per assignment, like the recovery itself."""
        request_tps = [(t.STOCK_REQUESTS.name, p) for p in range(self.settings.partitions)]
        request_tps += [(t.PAYMENT_REQUESTS.name, p) for p in partitions]
        ends = await self.runtime.end_offsets(request_tps)
        clock = time.monotonic()
        adopted = retired = 0
        for order_id, state in list(self.sagas.items()):
            partition = partition_for(order_id, self.settings.partitions)
            if not state or partition not in partitions:
                continue
            saga = records.saga_from_value(state["saga"])
            for request in domain.outstanding(saga):
                topic, key = _route(request)
                tp = (topic, partition_for(key, self.settings.partitions))
                self.waiting.sent(_request_key(request), order_id, tp, ends.get(tp, 0) - 1, partition, clock)
                adopted += 1
            if domain.retirable(saga):
                self.retiring.ended(order_id, _epoch(saga.updated_at))
                retired += 1
        log.info("adopted partitions %s: %d request(s) awaited, %d finished order(s) to retire",
                 sorted(partitions), adopted, retired)

    async def _chase_lost(self, outbox: Outbox) -> None:
        """Ask again for requests that were consumed and whose answer the saga has read past."""
        if not len(self.waiting):
            return
        replies = {(t.ORDER_EVENTS.name, p) for p in self._tracked}
        committed = await self.runtime.committed_offsets(self.waiting.request_partitions() | replies)
        needs = self.waiting.consumed(committed)
        if needs:
            ends = await self.runtime.end_offsets([(t.ORDER_EVENTS.name, p) for p in needs])
            self.waiting.mark({p: ends[(t.ORDER_EVENTS.name, p)] for p in needs if (t.ORDER_EVENTS.name, p) in ends})
        read = {p: committed.get((t.ORDER_EVENTS.name, p), 0) for p in self._tracked}
        for key in self.waiting.lost(read, time.monotonic()):
            order_id = self.waiting.order_of(key)
            state = self.sagas.get(order_id) if order_id is not None else None
            if order_id is None or state is None:
                if order_id is not None:
                    self.waiting.forget_order(order_id)
                continue
            saga = records.saga_from_value(state["saga"])
            wanted = {_request_key(r): r for r in domain.outstanding(saga)}
            request = wanted.get(key)
            if request is None:
                self.waiting.keep_only(order_id, wanted)
                continue
            kind = type(request).__name__
            with logs.bound(order_id=order_id, correlation_id=state.get("correlation_id")):
                log.warning("%s of order %s was consumed and its answer never came: asking again", kind, order_id)
            metrics.REQUESTS_RESENT.labels(kind).inc()
            self._send_request(outbox, request, make_headers(state.get("correlation_id"), "service:orion-saga", "service"))

    def _retire(self) -> None:
        """Forget finished orders whose retention ran out (a tombstone on the changelog)."""
        wall = time.time()
        for order_id in self.retiring.due(wall):
            partition = partition_for(order_id, self.settings.partitions)
            state = self.sagas.get(order_id)
            if state is None or partition not in self._tracked:
                continue
            saga = records.saga_from_value(state["saga"])
            if not domain.retirable(saga) or _epoch(saga.updated_at) + self.settings.order_retention > wall:
                continue  # it moved again since; a later entry retires it
            self.sagas.remove(order_id, partition)
            self.waiting.forget_order(order_id)
            metrics.STATE_RETIRED.labels("sagas").inc()


def register(orion: Orion) -> SagaAgent:
    """The saga agent, on `orders` and `order-events`."""
    saga = SagaAgent(orion.settings, orion.runtime, orion.tables.sagas, orion.bus, orion.assignment)

    async def order_saga(stream: faust.StreamT[bytes]) -> None:
        """Place, reserve, pay, confirm, compensate: events in order, a batch at a time."""
        await orion.runtime.ready()
        await handle_in_batches(
            stream, saga.handle_event, orion.bus, saga.sagas, what="order saga", housekeeping=saga.housekeeping,
        )

    orion.app.agent(
        orion.source(t.ORDERS.name, t.ORDER_EVENTS.name), name="orion_streams.agents.saga.order_saga", concurrency=1,
    )(order_saga)
    return saga
