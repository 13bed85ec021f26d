"""The saga agent's handler and housekeeping (agents/saga.py), driven directly with fakes: what
an order's events make it send, keep and forget. No broker, no database, no Faust app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import pytest

from orion_streams import records
from orion_streams import topics as t
from orion_streams.agents import common
from orion_streams.agents import saga as saga_module
from orion_streams.agents.saga import SagaAgent
from orion_streams.config import Settings
from orion_streams.domain import commands as c
from orion_streams.domain import events as e
from orion_streams.domain.catalog import Catalog
from orion_streams.domain.orders import OrderStatus
from orion_streams.partitioner import partition_for

from .fakes import (
    CATALOG,
    HEADERS,
    PARTITIONS,
    FakeAssignment,
    FakeBus,
    FakeClock,
    FakeRuntime,
    FakeTable,
    event,
    placed,
    sends,
    sent_types,
)

ORDER = "o-1"
HOME = partition_for(ORDER, PARTITIONS)  # the order's partition of orders and order-events
STATUS, AUDIT, STOCK, PAY = t.ORDER_STATUS.name, t.ORDER_AUDIT.name, t.STOCK_REQUESTS.name, t.PAYMENT_REQUESTS.name


@dataclass
class World:
    agent: SagaAgent
    runtime: FakeRuntime
    table: FakeTable
    bus: FakeBus
    assignment: FakeAssignment

    def outbox(self) -> common.Outbox:
        return common.Outbox(self.bus, self.table)

    async def handle(self, value: Any, *, key: str = ORDER, topic: str | None = None, **kwargs: Any) -> common.Outbox:
        """One event through the handler; the outbox it filled (not flushed)."""
        if topic is None:
            topic = t.ORDERS.name if isinstance(value, e.OrderPlaced | c.CancelOrder | c.FulfilOrder) else t.ORDER_EVENTS.name
        outbox = self.outbox()
        await self.agent.handle_event(event(topic, key, value, **kwargs), outbox)
        return outbox

    def saga(self, order_id: str = ORDER) -> Any:
        return records.saga_from_value(self.table[order_id]["saga"])


def world(**changes: Any) -> World:
    settings = Settings().with_changes(partitions=PARTITIONS, **changes)
    runtime, table, bus = FakeRuntime(), FakeTable(), FakeBus()
    assignment = FakeAssignment({t.ORDERS.name: {HOME}})
    agent = SagaAgent(settings, cast(Any, runtime), cast(Any, table), bus, cast(Any, assignment))
    return World(agent, runtime, table, bus, assignment)


def statuses(outbox: common.Outbox) -> list[OrderStatus]:
    return [m.status for topic, _, m in sends(outbox) if topic == STATUS]


# -- placing an order -------------------------------------------------------------------------


async def test_an_order_placed_starts_a_saga_asks_for_every_line_and_says_pending() -> None:
    w = world()
    outbox = await w.handle(placed(lines=[("A", 2), ("B", 1)]))

    assert w.saga().status is OrderStatus.PENDING
    [(partition, key, state)] = w.table.puts
    assert (partition, key) == (HOME, ORDER)
    assert (state["correlation_id"], state["actor"], state["actor_roles"]) == ("corr-1", "user:alice", "customer")
    # Each line is asked of its SKU's owner (keyed by SKU), the payment alongside (keyed by
    # order), and the order is PENDING, its audit entry riding on the status change.
    assert sorted(sent_types(outbox)) == sorted([
        (STATUS, ORDER, e.OrderStatusChanged), (STOCK, "A", c.ReserveLine), (STOCK, "B", c.ReserveLine),
        (PAY, ORDER, c.AuthorizePayment),
    ])
    messages = {type(m): m for _, _, m in sends(outbox) if not isinstance(m, c.ReserveLine)}
    reserves = [m for _, _, m in sends(outbox) if isinstance(m, c.ReserveLine)]
    assert sorted(reserves, key=lambda r: r.sku) == [c.ReserveLine(ORDER, "A", 2), c.ReserveLine(ORDER, "B", 1)]
    assert messages[c.AuthorizePayment] == c.AuthorizePayment(ORDER, 2 * 1_000 + 250, "EUR", "tok-1")
    change = messages[e.OrderStatusChanged]
    assert (change.status, change.previous, change.total, change.email) == (OrderStatus.PENDING, None, 2_250, "alice@example.com")
    assert [entry.kind for entry in change.audit] == ["OrderPlaced"]
    # The customer's identity travels on with every message the order causes.
    assert all(headers == HEADERS for *_, headers in (s for s in outbox.sends if s is not None))
    assert w.runtime.admission.decisions == []  # nothing decided yet


async def test_requests_are_awaited_once_the_broker_has_them_and_reach_their_partitions() -> None:
    w = world()
    outbox = await w.handle(placed(lines=[("A", 2), ("B", 1)]))
    assert len(w.agent.waiting) == 0  # not sent yet: nothing to wait for
    await outbox.flush()
    assert len(w.agent.waiting) == 3  # two reservations and the payment
    stock = w.bus.messages(STOCK)
    assert sorted((m.key, m.partition) for m in stock) == sorted(
        [("A", partition_for("A", PARTITIONS)), ("B", partition_for("B", PARTITIONS))])
    [status] = w.bus.messages(STATUS)
    assert status.partition == HOME and status.headers["correlation-id"] == b"corr-1"
    assert w.table.written == w.table.puts  # the table change is written after the sends


async def test_a_duplicate_order_placed_is_ignored() -> None:
    w = world()
    await w.handle(placed())
    before = dict(w.table)
    again = await w.handle(placed(event_id="ev-2"), offset=5)
    assert sends(again) == []
    assert dict(w.table) == before and len(w.table.puts) == 1


async def test_an_order_without_an_identified_actor_is_recorded_as_unidentified() -> None:
    w = world()
    outbox = await w.handle(placed(), headers=[])
    # No correlation id either: the event's id stands in for it.
    assert {tuple(headers) for *_, headers in (s for s in outbox.sends if s is not None)} == {
        (("correlation-id", b"ev-1"), ("actor", common.UNIDENTIFIED.encode())),
    }
    assert w.table[ORDER]["actor"] == common.UNIDENTIFIED


async def test_an_unsafe_identity_header_is_dropped_and_the_audit_says_so() -> None:
    w = world()
    outbox = await w.handle(placed(), headers=[("correlation-id", b"corr-1"), ("actor", b"mallory\nadmin")])
    [change] = [m for topic, _, m in sends(outbox) if topic == STATUS]
    [entry] = change.audit
    assert entry.data["headers_dropped"] == {"actor": "control characters"}
    assert w.table[ORDER]["actor"] == common.UNIDENTIFIED


async def test_an_order_the_saga_refuses_is_dead_lettered_invalid_order() -> None:
    w = world()
    # Decodable (every SKU is known) but not one order: its lines are priced in two currencies.
    outbox = await w.handle(placed(lines=[("A", 1), ("D", 1)]))
    [letter] = w.bus.dead_letters
    assert letter.kind == "invalid_order" and "currency" in letter.reason
    assert sends(outbox) == [] and w.table == {}


@pytest.mark.parametrize(("old", "started", "starts"), [
    (False, True, True),  # recent: not even looked up
    (True, True, False),  # older than half the retention and started before: a repeat
    (True, False, True),  # older, never started: a late first delivery
])
async def test_an_old_order_placed_starts_only_if_the_read_model_never_saw_it_start(
    monkeypatch: pytest.MonkeyPatch, old: bool, started: bool, starts: bool,
) -> None:
    clock = FakeClock().install(monkeypatch, saga_module, common)
    w = world(order_retention=100.0)
    if started:
        w.runtime.store.started.add(ORDER)
    stamp = clock.wall - (60.0 if old else 10.0)
    outbox = await w.handle(placed(), timestamp=stamp)
    assert (ORDER in w.table) is starts
    assert bool(sends(outbox)) is starts
    assert (("started", ORDER) in w.runtime.store.asked) is old


# -- records that cannot be handled ----------------------------------------------------------


async def test_a_record_keyed_by_another_order_is_dead_lettered_wrong_key() -> None:
    w = world()
    outbox = await w.handle(placed(order_id="o-1"), key="o-2")
    [letter] = w.bus.dead_letters
    assert letter.kind == "wrong_key" and letter.body["key"] == "o-2" and letter.body["source_topic"] == t.ORDERS.name
    assert sends(outbox) == [] and w.table == {}


async def test_an_answer_keyed_by_another_order_is_dead_lettered_wrong_key() -> None:
    w = world()
    await w.handle(placed())
    outbox = await w.handle(e.LineReserved(ORDER, "A", 2), key="o-2")
    assert w.bus.kinds() == ["wrong_key"] and sends(outbox) == []
    assert w.saga().line("A").state.value == "pending"


@pytest.mark.parametrize("raw", [b"not json", b'{"type": "Nope"}', b'{"type": "LineReserved", "order_id": "o-1"}'])
async def test_an_undecodable_record_is_dead_lettered_bad_record(raw: bytes) -> None:
    w = world()
    outbox = await w.handle(raw, topic=t.ORDER_EVENTS.name)
    [letter] = w.bus.dead_letters
    assert letter.kind == "bad_record" and letter.body["value"] == raw.decode()
    assert sends(outbox) == [] and w.table == {}


async def test_an_order_for_a_product_added_since_the_catalog_was_loaded_starts_after_a_refresh() -> None:
    w = world()
    w.runtime.catalog = Catalog([p for p in CATALOG.products() if p.sku != "C"])
    w.runtime.refreshed_catalog = CATALOG
    outbox = await w.handle(placed(lines=[("C", 1)]))
    assert w.runtime.refreshes == 1 and w.bus.kinds() == []
    assert (STOCK, "C", c.ReserveLine) in sent_types(outbox)


async def test_an_order_for_an_unknown_product_is_dead_lettered_when_the_catalog_is_fresh() -> None:
    w = world()
    w.runtime.catalog = Catalog([p for p in CATALOG.products() if p.sku != "C"])
    outbox = await w.handle(placed(lines=[("C", 1)]))
    assert w.bus.kinds() == ["bad_record"] and sends(outbox) == [] and w.table == {}


async def test_an_order_placed_on_the_wrong_partition_is_moved_to_its_own_and_nothing_else_happens() -> None:
    w = world()
    value = records.encode(placed())
    wrong = (HOME + 1) % PARTITIONS
    outbox = common.Outbox(w.bus, w.table)
    await w.agent.handle_event(event(t.ORDERS.name, ORDER, value, partition=wrong), outbox)
    [sent] = w.bus.fake.sent
    assert (sent.topic, sent.key, sent.value, sent.partition) == (t.ORDERS.name, ORDER.encode(), value, HOME)
    assert sent.headers == HEADERS
    assert sends(outbox) == [] and w.table == {} and w.bus.kinds() == []


# -- answers -------------------------------------------------------------------------------


async def test_every_line_reserved_and_the_payment_authorised_confirm_the_order() -> None:
    w = world()
    await w.handle(placed(lines=[("A", 2), ("B", 1)]))
    first = await w.handle(e.LineReserved(ORDER, "A", 2), offset=1)
    assert statuses(first) == [] and w.saga().status is OrderStatus.PENDING
    assert [type(m) for topic, _, m in sends(first) if topic == AUDIT] == [e.AuditEntry]  # no status: on order-audit
    second = await w.handle(e.LineReserved(ORDER, "B", 1), offset=2)
    assert statuses(second) == [OrderStatus.RESERVED]
    assert not any(topic == PAY for topic, _, _ in sends(second))  # asked alongside already
    assert w.runtime.admission.decisions == []
    paid = await w.handle(e.PaymentAuthorized(ORDER, "auth-1"), offset=3)
    assert statuses(paid) == [OrderStatus.CONFIRMED]
    assert w.saga().status is OrderStatus.CONFIRMED and w.saga().authorization_id == "auth-1"
    assert len(w.runtime.admission.decisions) == 1  # one decision, counted once
    # Answers carry no identity of their own: the order's is passed on.
    assert all(headers == HEADERS for *_, headers in (s for s in paid.sends if s is not None))


async def test_without_payment_alongside_the_payment_is_asked_once_every_line_is_held() -> None:
    w = world(pay_with_reservation=False)
    started = await w.handle(placed(lines=[("A", 2)]))
    assert PAY not in {topic for topic, _, _ in sends(started)}
    held = await w.handle(e.LineReserved(ORDER, "A", 2), offset=1)
    assert (PAY, ORDER, c.AuthorizePayment) in sent_types(held)
    assert statuses(held) == [OrderStatus.RESERVED]
    paid = await w.handle(e.PaymentAuthorized(ORDER, "auth-1"), offset=2)
    assert statuses(paid) == [OrderStatus.CONFIRMED]


async def test_after_a_sku_turned_a_line_away_an_order_for_more_than_it_has_left_pays_only_once_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeClock().install(monkeypatch, saga_module, common)
    w = world()
    await w.handle(placed(lines=[("A", 2)]))
    await w.handle(e.LineRejected(ORDER, "A", 2, 1, "A out of stock"), offset=1)  # 1 left
    more = await w.handle(placed(order_id="o-2", lines=[("A", 2)]), key="o-2")
    assert (t.STOCK_REQUESTS.name, "A", c.ReserveLine) in sent_types(more)
    assert PAY not in {topic for topic, _, _ in sends(more)}  # likely rejected: no authorisation to void
    within = await w.handle(placed(order_id="o-3", lines=[("A", 1)]), key="o-3")
    assert (PAY, "o-3", c.AuthorizePayment) in sent_types(within)


async def test_a_rejected_line_rejects_the_order_and_gives_back_what_is_held() -> None:
    w = world()
    await w.handle(placed(lines=[("A", 2), ("B", 1)]))
    await w.handle(e.LineReserved(ORDER, "A", 2), offset=1)
    outbox = await w.handle(e.LineRejected(ORDER, "B", 1, 0, "B out of stock"), offset=2)
    assert statuses(outbox) == [OrderStatus.REJECTED]
    [change] = [m for topic, _, m in sends(outbox) if topic == STATUS]
    assert change.failure_reason == "B out of stock"
    assert [(topic, key, m) for topic, key, m in sends(outbox) if topic == STOCK] == [(STOCK, "A", c.ReleaseLine(ORDER, "A"))]
    assert w.saga().status is OrderStatus.REJECTED
    assert len(w.runtime.admission.decisions) == 1


async def test_a_declined_payment_fails_the_order_and_releases_its_lines() -> None:
    w = world(pay_with_reservation=False)
    await w.handle(placed(lines=[("A", 2)]))
    await w.handle(e.LineReserved(ORDER, "A", 2), offset=1)
    outbox = await w.handle(e.PaymentDeclined(ORDER, "card refused"), offset=2)
    assert statuses(outbox) == [OrderStatus.PAYMENT_FAILED]
    assert (STOCK, "A", c.ReleaseLine(ORDER, "A")) in sends(outbox)
    assert len(w.runtime.admission.decisions) == 1


async def test_a_redelivered_answer_changes_nothing() -> None:
    w = world()
    await w.handle(placed(lines=[("A", 2), ("B", 1)]))
    await w.handle(e.LineReserved(ORDER, "A", 2), offset=1)
    before, puts = dict(w.table), len(w.table.puts)
    again = await w.handle(e.LineReserved(ORDER, "A", 2), offset=1)
    assert sends(again) == [] and dict(w.table) == before and len(w.table.puts) == puts


# -- answers for orders this worker holds no saga for ------------------------------------------


@pytest.mark.parametrize(("status", "released"), [
    (None, True),  # never known to the read model: nothing will use the units
    ("REJECTED", True),  # finished: its saga was retired, the units go back
    ("CANCELLED", True),
    ("PENDING", False),  # in flight: its OrderPlaced has not reached this worker yet
    ("CONFIRMED", False),
])
async def test_units_held_for_an_unknown_order_go_back_unless_the_order_is_in_flight(
    status: str | None, released: bool,
) -> None:
    w = world()
    if status is not None:
        w.runtime.store.statuses[ORDER] = status
    outbox = await w.handle(e.LineReserved(ORDER, "A", 2))
    assert sends(outbox) == ([(STOCK, "A", c.ReleaseLine(ORDER, "A"))] if released else [])
    if released:
        [(*_, headers)] = [s for s in outbox.sends if s is not None]
        assert dict(headers) == {"correlation-id": b"corr-1", "actor": b"service:orion-saga", "actor-roles": b"service"}
    assert w.table == {} and w.bus.kinds() == []


@pytest.mark.parametrize("answer", [
    e.LineRejected(ORDER, "A", 2, 0, "out of stock"), e.LineReleased(ORDER, "A", 2), e.LineCommitted(ORDER, "A", 2),
    e.PaymentDeclined(ORDER, "no"), e.PaymentTimedOut(ORDER), e.PaymentVoided(ORDER, "auth-1", "voided"),
    e.PaymentVoidFailed(ORDER, "provider away"),
])
async def test_other_answers_for_an_unknown_order_change_nothing(answer: Any) -> None:
    w = world()
    outbox = await w.handle(answer)
    assert sends(outbox) == [] and w.table == {} and w.bus.kinds() == []
    assert w.runtime.store.asked == []


@pytest.mark.parametrize("message", [e.PaymentAuthorized(ORDER, "auth-1"), c.CancelOrder(ORDER, "ev-9")])
async def test_a_message_that_needs_an_order_the_saga_never_saw_is_dead_lettered_unknown_order(message: Any) -> None:
    w = world()
    outbox = await w.handle(message)
    assert w.bus.kinds() == ["unknown_order"] and sends(outbox) == [] and w.table == {}


# -- housekeeping: retirement and lost requests ---------------------------------------------------


async def _finished(w: World) -> None:
    """An order placed and rejected: nothing outstanding, so it can be forgotten."""
    await w.handle(placed(lines=[("A", 2)]))
    await w.handle(e.LineRejected(ORDER, "A", 2, 0, "out of stock"), offset=1)
    assert w.saga().status is OrderStatus.REJECTED


async def test_housekeeping_retires_a_finished_order_after_the_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock().install(monkeypatch, saga_module, common)
    w = world(order_retention=60.0, pay_with_reservation=False)
    await _finished(w)
    clock.advance(59.0)
    await w.agent.housekeeping(w.outbox())
    assert ORDER in w.table and w.table.removed == []
    clock.advance(2.0)
    await w.agent.housekeeping(w.outbox())
    assert ORDER not in w.table and w.table.removed == [(ORDER, HOME)]  # a tombstone on the order's partition


async def test_a_finished_order_that_moved_again_is_kept_a_whole_retention_from_its_last_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock().install(monkeypatch, saga_module, common)
    w = world(order_retention=60.0, pay_with_reservation=False)
    await _finished(w)  # queued for T0 + 60
    clock.advance(30.0)
    # A stray reservation for the rejected line: the units are given back (the order waits
    # for that answer), then the release is confirmed: finished again, at T0 + 40.
    late = await w.handle(e.LineReserved(ORDER, "A", 2), offset=2)
    assert sends(late)[-1] == (STOCK, "A", c.ReleaseLine(ORDER, "A"))
    clock.advance(10.0)
    await w.handle(e.LineReleased(ORDER, "A", 2), offset=3)
    clock.advance(21.0)  # T0 + 61: the first deadline passed, the last change is 21 s old
    await w.agent.housekeeping(w.outbox())
    assert ORDER in w.table and w.table.removed == []
    clock.advance(40.0)
    await w.agent.housekeeping(w.outbox())
    assert w.table.removed == [(ORDER, HOME)]


async def test_housekeeping_retires_nothing_while_the_assignment_is_unsettled(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock().install(monkeypatch, saga_module, common)
    w = world(order_retention=60.0, pay_with_reservation=False)
    await _finished(w)
    clock.advance(120.0)
    w.assignment.settled = False
    await w.agent.housekeeping(w.outbox())
    assert ORDER in w.table and w.table.removed == []
    w.assignment.settled = True  # the rebalance is over
    await w.agent.housekeeping(w.outbox())
    assert ORDER not in w.table


async def test_housekeeping_retires_no_order_of_a_partition_this_worker_does_not_own(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock().install(monkeypatch, saga_module, common)
    w = world(order_retention=60.0, pay_with_reservation=False)
    w.assignment.by_topic[t.ORDERS.name] = {(HOME + 1) % PARTITIONS}
    await _finished(w)
    clock.advance(120.0)
    await w.agent.housekeeping(w.outbox())
    assert ORDER in w.table and w.table.removed == []


async def test_housekeeping_never_retires_an_order_still_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock().install(monkeypatch, saga_module, common)
    w = world(order_retention=60.0)
    await w.handle(placed())
    clock.advance(3600.0)
    await w.agent.housekeeping(w.outbox())
    assert ORDER in w.table and w.table.removed == []


async def test_housekeeping_retires_finished_orders_found_in_a_newly_assigned_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a takeover: the recovered table holds finished orders this worker never handled."""
    clock = FakeClock().install(monkeypatch, saga_module, common)
    before = world(order_retention=60.0, pay_with_reservation=False)
    await _finished(before)
    w = world(order_retention=60.0, pay_with_reservation=False)
    w.table.update(before.table)  # recovered from the changelog
    clock.advance(61.0)
    await w.agent.housekeeping(w.outbox())
    assert w.table.removed == [(ORDER, HOME)]


async def _awaiting_a_reservation(w: World, *, reply_committed: int) -> common.Outbox:
    """An order whose ReserveLine was consumed (its partition's commit passed it); the
    saga's own commit on order-events stands at `reply_committed`, the mark at 3."""
    await w.agent.housekeeping(w.outbox())  # the partition adopted: nothing in it yet
    started = await w.handle(placed(lines=[("A", 2)]))
    await started.flush()
    assert len(w.agent.waiting) == 1
    request_tp = (STOCK, partition_for("A", PARTITIONS))
    w.runtime.committed = {request_tp: 1, (t.ORDER_EVENTS.name, HOME): reply_committed}
    w.runtime.ends = {(t.ORDER_EVENTS.name, HOME): 3}
    outbox = w.outbox()
    await w.agent.housekeeping(outbox)
    return outbox


async def test_a_request_consumed_whose_answer_never_came_is_asked_again() -> None:
    w = world(pay_with_reservation=False)
    outbox = await _awaiting_a_reservation(w, reply_committed=3)
    assert sends(outbox) == [(STOCK, "A", c.ReserveLine(ORDER, "A", 2))]
    [(*_, headers)] = [s for s in outbox.sends if s is not None]
    assert dict(headers)["actor"] == b"service:orion-saga" and dict(headers)["correlation-id"] == b"corr-1"


async def test_a_request_is_not_asked_again_before_the_saga_read_up_to_where_its_answer_would_be() -> None:
    w = world(pay_with_reservation=False)
    outbox = await _awaiting_a_reservation(w, reply_committed=2)
    assert sends(outbox) == []
    w.runtime.committed[(t.ORDER_EVENTS.name, HOME)] = 3  # read past the mark: the answer is lost
    later = w.outbox()
    await w.agent.housekeeping(later)
    assert sends(later) == [(STOCK, "A", c.ReserveLine(ORDER, "A", 2))]


async def test_an_answered_request_is_never_asked_again() -> None:
    w = world(pay_with_reservation=False)
    outbox = await _awaiting_a_reservation(w, reply_committed=2)
    assert sends(outbox) == []
    await w.handle(e.LineReserved(ORDER, "A", 2), offset=2)  # the answer came
    assert len(w.agent.waiting) == 0  # nothing of the order is awaited any more
    w.runtime.committed[(t.ORDER_EVENTS.name, HOME)] = 3
    later = w.outbox()
    await w.agent.housekeeping(later)
    assert not any(isinstance(m, c.ReserveLine) for _, _, m in sends(later))
