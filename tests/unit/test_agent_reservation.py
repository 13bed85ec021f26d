"""The reservation agent's handler and housekeeping (agents/reservation.py), driven directly
with fakes: what a stock command answers, publishes and keeps, and when a closed hold is
forgotten. No broker, no Faust app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import pytest

from orion_streams import records
from orion_streams import topics as t
from orion_streams.agents import common
from orion_streams.agents import reservation as reservation_module
from orion_streams.agents.reservation import ReservationAgent
from orion_streams.config import Settings
from orion_streams.domain import commands as c
from orion_streams.domain import events as e
from orion_streams.domain.stock import HoldState, StockLevel
from orion_streams.partitioner import partition_for

from .fakes import (
    CATALOG,
    HEADERS,
    PARTITIONS,
    FakeAssignment,
    FakeBus,
    FakeClock,
    FakeTable,
    event,
    sends,
    sent_types,
)

SKU = "A"
HOME = partition_for(SKU, PARTITIONS)  # the SKU's partition of stock-requests
HOLD = records.hold_key(SKU, "o-1")
REQUESTS, EVENTS, LEVELS = t.STOCK_REQUESTS.name, t.ORDER_EVENTS.name, t.STOCK_LEVELS.name


def stock(on_hand: int, reserved: int = 0, threshold: int = 2, version: int = 1) -> list[Any]:
    return records.stock_entry(StockLevel(SKU, on_hand, reserved, threshold, version), None, None, None)


def level_of(table: FakeTable, sku: str = SKU) -> StockLevel:
    return records.stock_from_value(sku, table[sku])


@dataclass
class World:
    agent: ReservationAgent
    table: FakeTable
    bus: FakeBus
    assignment: FakeAssignment

    def outbox(self) -> common.Outbox:
        return common.Outbox(self.bus, self.table)

    async def handle(
        self, value: Any, *, key: str = SKU, offset: int = 0, outbox: common.Outbox | None = None, **kwargs: Any,
    ) -> common.Outbox:
        outbox = outbox or self.outbox()
        await self.agent.handle_event(event(REQUESTS, key, value, offset=offset, **kwargs), outbox)
        return outbox


def world(rows: dict[str, Any] | None = None, **changes: Any) -> World:
    settings = Settings().with_changes(partitions=PARTITIONS, **changes)
    table, bus = FakeTable({SKU: stock(10)} if rows is None else rows), FakeBus()
    assignment = FakeAssignment({REQUESTS: {HOME}})
    agent = ReservationAgent(settings, lambda: CATALOG, cast(Any, table), bus, cast(Any, assignment))
    return World(agent, table, bus, assignment)


# -- stock commands -----------------------------------------------------------------------


async def test_a_reservation_within_stock_holds_units_answers_and_publishes_the_level() -> None:
    w = world()
    outbox = await w.handle(c.ReserveLine("o-1", SKU, 3), offset=7)
    assert sends(outbox) == [
        (EVENTS, "o-1", e.LineReserved("o-1", SKU, 3)),
        (LEVELS, SKU, e.StockLevelChanged(SKU, 10, 3, 2, 2, sends(outbox)[1][2].at)),
    ]
    assert all(headers == HEADERS for *_, headers in (s for s in outbox.sends if s is not None))
    assert level_of(w.table) == StockLevel(SKU, 10, 3, 2, 2)
    assert w.table[HOLD] == [3, HoldState.HELD.value]
    # Changes go to the event's partition: the row before the hold it counts.
    assert [(partition, key) for partition, key, _ in w.table.puts] == [(HOME, SKU), (HOME, HOLD)]


async def test_the_answer_reaches_the_orders_partition_and_the_level_the_skus() -> None:
    w = world()
    outbox = await w.handle(c.ReserveLine("o-1", SKU, 3))
    await outbox.flush()
    [answer] = w.bus.messages(EVENTS)
    [level] = w.bus.messages(LEVELS)
    assert (answer.key, answer.partition) == ("o-1", partition_for("o-1", PARTITIONS))
    assert (level.key, level.partition) == (SKU, HOME)
    assert answer.headers == dict(HEADERS)
    # The level is handed to the producer before the answer that counts on it.
    topics = [s.topic for s in w.bus.fake.sent]
    assert topics.index(LEVELS) < topics.index(EVENTS)
    assert w.table.written == w.table.puts


async def test_a_batch_publishes_only_the_last_level_of_a_sku_in_the_place_of_the_last() -> None:
    w = world()
    outbox = w.outbox()
    await w.handle(c.ReserveLine("o-1", SKU, 3), offset=1, outbox=outbox)
    await w.handle(c.ReserveLine("o-2", SKU, 2), offset=2, outbox=outbox)
    assert [(topic, type(m)) for topic, _, m in sends(outbox)] == [
        (EVENTS, e.LineReserved), (EVENTS, e.LineReserved), (LEVELS, e.StockLevelChanged),
    ]
    [level] = [m for topic, _, m in sends(outbox) if topic == LEVELS]
    assert (level.reserved, level.version) == (5, 3)
    await outbox.flush()
    assert [m.message.reserved for m in w.bus.messages(LEVELS)] == [5]
    assert [m.key for m in w.bus.messages(EVENTS)] == ["o-1", "o-2"]


async def test_a_reservation_beyond_stock_is_rejected_and_moves_nothing() -> None:
    w = world()
    outbox = await w.handle(c.ReserveLine("o-1", SKU, 11))
    [(topic, key, answer)] = sends(outbox)
    assert (topic, key, type(answer)) == (EVENTS, "o-1", e.LineRejected)
    assert (answer.quantity, answer.available) == (11, 10)
    assert level_of(w.table) == StockLevel(SKU, 10, 0, 2, 1)
    assert w.table[HOLD][:2] == [11, HoldState.REJECTED.value]  # closed, with when
    assert len(w.agent.retiring) == 1


async def test_falling_to_the_threshold_publishes_a_low_stock_alert() -> None:
    w = world()
    outbox = await w.handle(c.ReserveLine("o-1", SKU, 8))  # 2 left, threshold 2
    [(topic, key, alert)] = [s for s in sends(outbox) if isinstance(s[2], e.LowStockDetected)]
    assert (topic, key, alert.available, alert.low_stock_threshold) == (LEVELS, SKU, 2, 2)


async def test_a_redelivered_reservation_is_answered_again_and_changes_nothing() -> None:
    w = world()
    await w.handle(c.ReserveLine("o-1", SKU, 3), offset=7)
    before, puts = dict(w.table), len(w.table.puts)
    again = await w.handle(c.ReserveLine("o-1", SKU, 3), offset=7)
    assert sent_types(again) == [(EVENTS, "o-1", e.LineReserved)]  # the sender still hears
    assert dict(w.table) == before and len(w.table.puts) == puts
    assert level_of(w.table).reserved == 3


async def test_a_reservation_asked_again_later_holds_nothing_more() -> None:
    w = world()
    await w.handle(c.ReserveLine("o-1", SKU, 3), offset=7)
    again = await w.handle(c.ReserveLine("o-1", SKU, 3), offset=9)  # the saga asked again
    assert sent_types(again) == [(EVENTS, "o-1", e.LineReserved)]
    assert level_of(w.table).reserved == 3


async def test_a_release_gives_the_units_back_and_closes_the_hold() -> None:
    w = world()
    await w.handle(c.ReserveLine("o-1", SKU, 3), offset=1)
    outbox = await w.handle(c.ReleaseLine("o-1", SKU), offset=2)
    assert [type(m) for _, _, m in sends(outbox)] == [e.LineReleased, e.StockLevelChanged]
    assert level_of(w.table).reserved == 0
    assert w.table[HOLD][:2] == [3, HoldState.RELEASED.value]


async def test_an_adjustment_is_applied_once() -> None:
    w = world()
    command = c.AdjustStock(SKU, "adj-1", 5, "restock")
    first = await w.handle(command, offset=1)
    assert [type(m) for _, _, m in sends(first)] == [e.StockLevelChanged, e.StockAdjusted]
    again = await w.handle(command, offset=2)  # produced twice
    assert sends(again) == [] and level_of(w.table).on_hand == 15


# -- records that cannot be handled ----------------------------------------------------------


async def test_a_command_keyed_by_another_sku_is_dead_lettered_wrong_key() -> None:
    w = world()
    outbox = await w.handle(c.ReserveLine("o-1", SKU, 3), key="B")
    [letter] = w.bus.dead_letters
    assert letter.kind == "wrong_key" and letter.body["key"] == "B"
    assert sends(outbox) == [] and w.table.puts == []


@pytest.mark.parametrize("message", [c.AuthorizePayment("o-1", 100, "EUR", "tok"), e.LineReserved("o-1", SKU, 1)])
async def test_a_message_that_is_not_a_stock_command_is_dead_lettered_wrong_topic(message: Any) -> None:
    w = world()
    outbox = await w.handle(message)
    assert w.bus.kinds() == ["wrong_topic"] and sends(outbox) == [] and w.table.puts == []


@pytest.mark.parametrize("raw", [b"{", b"[1]", b'{"type": "ReserveLine", "sku": "A"}'])
async def test_an_undecodable_record_is_dead_lettered_bad_record(raw: bytes) -> None:
    w = world()
    outbox = await w.handle(raw)
    assert w.bus.kinds() == ["bad_record"] and sends(outbox) == [] and w.table.puts == []


# -- housekeeping: closed holds are forgotten after the retention --------------------------------


async def _rejected(w: World) -> None:
    await w.handle(c.ReserveLine("o-1", SKU, 11))
    assert HOLD in w.table


async def test_a_closed_hold_is_forgotten_after_the_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock().install(monkeypatch, reservation_module, common)
    w = world(order_retention=60.0)
    await _rejected(w)
    clock.advance(59.0)
    await w.agent.housekeeping(w.outbox())
    assert HOLD in w.table
    clock.advance(2.0)
    await w.agent.housekeeping(w.outbox())
    assert HOLD not in w.table and w.table.removed == [(HOLD, HOME)]
    assert SKU in w.table  # the stock row stays


async def test_a_hold_is_kept_a_whole_retention_from_when_the_table_says_it_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The queue's deadline is a hint: the stored hold's own closing time decides (a hold
    retired and made again by a stray repeat closes again later under the same key)."""
    clock = FakeClock().install(monkeypatch, reservation_module, common)
    w = world(order_retention=60.0)
    await _rejected(w)  # queued for T0 + 60
    w.table[HOLD] = [11, HoldState.REJECTED.value, clock.wall + 30.0]  # closed (again) at T0 + 30
    clock.advance(61.0)
    await w.agent.housekeeping(w.outbox())
    assert HOLD in w.table and w.table.removed == []


async def test_a_held_hold_is_never_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock().install(monkeypatch, reservation_module, common)
    w = world(order_retention=60.0)
    await w.handle(c.ReserveLine("o-1", SKU, 3))
    clock.advance(3600.0)
    await w.agent.housekeeping(w.outbox())
    assert w.table.removed == [] and w.table[HOLD] == [3, HoldState.HELD.value]


@pytest.mark.parametrize("owned", [None, set()], ids=["unsettled", "not-owned"])
async def test_a_closed_hold_of_a_partition_not_owned_is_kept(monkeypatch: pytest.MonkeyPatch, owned: set[int] | None) -> None:
    clock = FakeClock().install(monkeypatch, reservation_module, common)
    w = world(order_retention=60.0)
    await _rejected(w)
    if owned is None:
        w.assignment.settled = False
    else:
        w.assignment.by_topic[REQUESTS] = {(HOME + 1) % PARTITIONS}
    clock.advance(120.0)
    await w.agent.housekeeping(w.outbox())
    assert HOLD in w.table and w.table.removed == []


async def test_closed_holds_found_in_a_newly_assigned_partition_are_forgotten_by_when_they_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock().install(monkeypatch, reservation_module, common)
    old, recent, held = (records.hold_key(SKU, o) for o in ("o-old", "o-recent", "o-held"))
    w = world({
        SKU: stock(10, 3),
        old: [2, HoldState.RELEASED.value, clock.wall - 61.0],
        recent: [2, HoldState.RELEASED.value, clock.wall - 30.0],
        held: [3, HoldState.HELD.value],
        records.adjustment_key(SKU, "adj-1"): ["adjustment", "applied", clock.wall - 61.0],
    }, order_retention=60.0)
    await w.agent.housekeeping(w.outbox())
    assert sorted(w.table.removed) == sorted([(old, HOME), (records.adjustment_key(SKU, "adj-1"), HOME)])
    clock.advance(31.0)
    await w.agent.housekeeping(w.outbox())
    assert (recent, HOME) in w.table.removed and held in w.table and SKU in w.table
