"""Stock rules: reserve, release, commit and adjust one SKU's level and an order's hold."""

from __future__ import annotations

import random

import pytest

from orion_streams.domain.commands import AdjustStock, CommitLine, ReleaseLine, ReserveLine
from orion_streams.domain.events import (
    AdjustmentRejected,
    LineCommitted,
    LineRejected,
    LineReleased,
    LineReserved,
    LowStockDetected,
    StockAdjusted,
    StockLevelChanged,
)
from orion_streams.domain.stock import (
    Hold,
    HoldState,
    StockLevel,
    adjust,
    commit,
    release,
    reserve,
)

AT = "2024-05-01T12:00:00Z"


def level(on_hand: int = 10, reserved: int = 0, threshold: int = 2, version: int = 0) -> StockLevel:
    return StockLevel("A", on_hand, reserved, threshold, version)


def held(order: str = "o1", qty: int = 3) -> Hold:
    return Hold(order, "A", qty, HoldState.HELD)


def of_type(events: list[object], cls: type) -> list[object]:
    return [e for e in events if isinstance(e, cls)]


# --- reserve -------------------------------------------------------------------------


def test_reserve_with_enough_stock_holds_units() -> None:
    new, hold, events = reserve(level(), None, ReserveLine("o1", "A", 3), AT)
    assert (new.on_hand, new.reserved, new.available, new.version) == (10, 3, 7, 1)
    assert hold == Hold("o1", "A", 3, HoldState.HELD)
    assert events[0] == LineReserved("o1", "A", 3)
    assert events[1] == StockLevelChanged("A", 10, 3, 2, 1, AT)


def test_reserve_exactly_what_is_available() -> None:
    new, hold, events = reserve(level(10, 4), None, ReserveLine("o1", "A", 6), AT)
    assert new.available == 0 and new.reserved == 10
    assert hold is not None and hold.state is HoldState.HELD
    assert isinstance(events[0], LineReserved)


def test_reserve_more_than_available_is_rejected_and_changes_nothing() -> None:
    before = level(10, 4)
    new, hold, events = reserve(before, None, ReserveLine("o1", "A", 7), AT)
    assert new == before
    assert hold == Hold("o1", "A", 7, HoldState.REJECTED)
    assert len(events) == 1
    rejected = events[0]
    assert isinstance(rejected, LineRejected)
    assert (rejected.order_id, rejected.sku, rejected.quantity, rejected.available) == (
        "o1",
        "A",
        7,
        6,
    )
    assert "requested 7" in rejected.reason and "available 6" in rejected.reason


@pytest.mark.parametrize("qty", [0, -1])
def test_reserve_refuses_non_positive_quantity(qty: int) -> None:
    with pytest.raises(ValueError):
        reserve(level(), None, ReserveLine("o1", "A", qty), AT)


def test_redelivered_reserve_replays_held_answer_without_touching_stock() -> None:
    first_level, hold, first = reserve(level(), None, ReserveLine("o1", "A", 3), AT)
    again_level, again_hold, again = reserve(first_level, hold, ReserveLine("o1", "A", 3), AT)
    assert again_level is first_level
    assert again_hold == hold
    assert again == [first[0]]


def test_redelivered_reserve_replays_rejection_without_touching_stock() -> None:
    start = level(2)
    _, hold, first = reserve(start, None, ReserveLine("o1", "A", 5), AT)
    again_level, again_hold, again = reserve(start, hold, ReserveLine("o1", "A", 5), AT)
    assert again_level is start
    assert again_hold == hold
    assert len(again) == 1 and isinstance(again[0], LineRejected)
    replay, original = again[0], first[0]
    assert isinstance(original, LineRejected)
    assert (replay.order_id, replay.sku, replay.quantity) == (
        original.order_id,
        original.sku,
        original.quantity,
    )


def test_rejected_hold_is_not_retried_even_when_stock_arrives() -> None:
    _, hold, _ = reserve(level(2), None, ReserveLine("o1", "A", 5), AT)
    restocked = level(100)
    new, _, events = reserve(restocked, hold, ReserveLine("o1", "A", 5), AT)
    assert new is restocked
    assert isinstance(events[0], LineRejected)


# --- release -------------------------------------------------------------------------


def test_release_gives_held_units_back() -> None:
    new, hold, events = release(level(10, 3, version=4), held(), ReleaseLine("o1", "A"), AT)
    assert (new.on_hand, new.reserved, new.version) == (10, 0, 5)
    assert hold == Hold("o1", "A", 3, HoldState.RELEASED)
    assert events[0] == LineReleased("o1", "A", 3)
    assert isinstance(events[1], StockLevelChanged)


def test_second_release_changes_nothing_and_answers_again() -> None:
    after_first, hold, _ = release(level(10, 3), held(), ReleaseLine("o1", "A"), AT)
    new, again_hold, events = release(after_first, hold, ReleaseLine("o1", "A"), AT)
    assert new is after_first
    assert again_hold == hold
    # A sender whose first answer was lost can settle on the repeat.
    assert events == [LineReleased("o1", "A", 3)]


def test_release_without_hold_leaves_a_tombstone() -> None:
    start = level(10)
    new, hold, events = release(start, None, ReleaseLine("o1", "A"), AT)
    assert new is start
    assert hold == Hold("o1", "A", 0, HoldState.RELEASED)
    assert events == [LineReleased("o1", "A", 0)]


def test_late_reserve_after_tombstone_holds_nothing() -> None:
    start = level(10)
    _, tombstone, _ = release(start, None, ReleaseLine("o1", "A"), AT)
    new, hold, events = reserve(start, tombstone, ReserveLine("o1", "A", 4), AT)
    # LineReserved would say units are held: the answer says the hold was released.
    assert new is start
    assert new.reserved == 0 and new.available == 10
    assert hold == tombstone
    assert events == [LineReleased("o1", "A", 0)]
    assert not of_type(events, StockLevelChanged)


# --- commit --------------------------------------------------------------------------


def test_commit_sells_held_units() -> None:
    new, hold, events = commit(level(10, 3, version=7), held(), CommitLine("o1", "A"), AT)
    assert (new.on_hand, new.reserved, new.available, new.version) == (7, 0, 7, 8)
    assert hold == Hold("o1", "A", 3, HoldState.COMMITTED)
    assert events[0] == LineCommitted("o1", "A", 3)


@pytest.mark.parametrize(
    "hold",
    [
        None,
        Hold("o1", "A", 3, HoldState.RELEASED),
        Hold("o1", "A", 3, HoldState.REJECTED),
    ],
)
def test_commit_without_a_live_hold_sells_nothing_and_says_so(hold: Hold | None) -> None:
    start = level(10, 3)
    new, same, events = commit(start, hold, CommitLine("o1", "A"), AT)
    assert new is start and same == hold and events == [LineCommitted("o1", "A", 0)]


def test_second_commit_answers_again_without_selling_twice() -> None:
    sold, hold, _ = commit(level(10, 3), held(), CommitLine("o1", "A"), AT)
    new, same, events = commit(sold, hold, CommitLine("o1", "A"), AT)
    assert new is sold and same == hold and events == [LineCommitted("o1", "A", 3)]


def test_release_after_commit_changes_nothing_and_says_it_was_sold() -> None:
    sold, hold, _ = commit(level(10, 3), held(), CommitLine("o1", "A"), AT)
    new, _, events = release(sold, hold, ReleaseLine("o1", "A"), AT)
    assert new is sold and events == [LineCommitted("o1", "A", 3)]


def test_reserve_asked_again_answers_with_where_the_hold_stands() -> None:
    start = level(10, 3)
    for state, answer in [
        (HoldState.HELD, LineReserved("o1", "A", 3)),
        (HoldState.RELEASED, LineReleased("o1", "A", 3)),
        (HoldState.COMMITTED, LineCommitted("o1", "A", 3)),
    ]:
        new, _, events = reserve(start, Hold("o1", "A", 3, state), ReserveLine("o1", "A", 3), AT)
        assert new is start and events == [answer]


def test_only_a_held_hold_is_not_final() -> None:
    assert [s for s in HoldState if not s.is_final] == [HoldState.HELD]


# --- adjust --------------------------------------------------------------------------


def test_restock_adds_units() -> None:
    new, events = adjust(level(10, 3), AdjustStock("A", "adj-1", 5, "restock"), AT)
    assert (new.on_hand, new.reserved, new.version) == (15, 3, 1)
    assert isinstance(events[0], StockLevelChanged)
    assert events[-1] == StockAdjusted("A", "adj-1", 5, "restock", 15, 3)  # after its level


def test_negative_adjustment_down_to_zero_available_is_allowed() -> None:
    new, _ = adjust(level(10, 3, threshold=0), AdjustStock("A", "adj-1", -7, "damage"), AT)
    assert (new.on_hand, new.reserved, new.available) == (3, 3, 0)


def test_negative_adjustment_beyond_available_is_rejected() -> None:
    start = level(10, 3)
    new, events = adjust(start, AdjustStock("A", "adj-1", -8, "damage"), AT)
    assert new is start
    assert len(events) == 1 and isinstance(events[0], AdjustmentRejected)
    assert events[0].adjustment_id == "adj-1"
    assert "would leave -1 available" in events[0].reason


def test_unknown_reason_is_rejected() -> None:
    start = level()
    new, events = adjust(start, AdjustStock("A", "adj-1", 5, "gift"), AT)
    assert new is start
    assert events == [AdjustmentRejected("A", "adj-1", "unknown reason 'gift'")]


def test_adjustment_can_update_the_threshold() -> None:
    new, _ = adjust(level(threshold=2), AdjustStock("A", "adj-1", 0, "correction", 5), AT)
    assert new.low_stock_threshold == 5 and new.on_hand == 10
    kept, _ = adjust(new, AdjustStock("A", "adj-2", 1, "restock"), AT)
    assert kept.low_stock_threshold == 5


# --- low stock and versions ----------------------------------------------------------


def test_low_stock_is_reported_once_per_crossing() -> None:
    lvl = level(10, threshold=5)
    seen: list[LowStockDetected] = []
    for order in ("o1", "o2", "o3"):  # available 7, 4, 1
        lvl, _, events = reserve(lvl, None, ReserveLine(order, "A", 3), AT)
        seen.extend(e for e in events if isinstance(e, LowStockDetected))
    assert seen == [LowStockDetected("A", 4, 5, AT, version=2)]  # the second reservation crossed


def test_low_stock_is_reported_again_after_recovering() -> None:
    lvl = level(10, threshold=5)
    lvl, hold, first = reserve(lvl, None, ReserveLine("o1", "A", 6), AT)
    lvl, hold, back = release(lvl, hold, ReleaseLine("o1", "A"), AT)
    lvl, _, again = reserve(lvl, None, ReserveLine("o2", "A", 6), AT)
    assert len(of_type(first, LowStockDetected)) == 1
    assert of_type(back, LowStockDetected) == []
    assert len(of_type(again, LowStockDetected)) == 1


def test_raising_the_threshold_can_report_low_stock() -> None:
    _, events = adjust(level(10, threshold=2), AdjustStock("A", "adj-1", 0, "correction", 10), AT)
    assert of_type(events, LowStockDetected) == [LowStockDetected("A", 10, 10, AT, version=1)]


def test_version_grows_by_one_per_change_only() -> None:
    lvl = level()
    lvl, hold, _ = reserve(lvl, None, ReserveLine("o1", "A", 2), AT)
    assert lvl.version == 1
    lvl, _, _ = reserve(lvl, hold, ReserveLine("o1", "A", 2), AT)  # redelivery
    assert lvl.version == 1
    lvl, _, _ = reserve(lvl, None, ReserveLine("o2", "A", 99), AT)  # rejected
    assert lvl.version == 1
    lvl, hold, _ = commit(lvl, hold, CommitLine("o1", "A"), AT)
    assert lvl.version == 2
    lvl, _ = adjust(lvl, AdjustStock("A", "adj-1", 4, "restock"), AT)
    assert lvl.version == 3
    lvl, _ = adjust(lvl, AdjustStock("A", "adj-2", -999, "damage"), AT)  # rejected
    assert lvl.version == 3


# --- property: random operations keep the books straight ----------------------------


def test_random_operations_keep_stock_consistent() -> None:
    rng = random.Random(20240501)
    skus = ["A", "B", "C"]
    orders = [f"o{i}" for i in range(300)]
    levels = {sku: StockLevel(sku, low_stock_threshold=3) for sku in skus}
    holds: dict[tuple[str, str], Hold] = {}
    stocked = dict.fromkeys(skus, 0)
    sold = dict.fromkeys(skus, 0)
    ledger = dict.fromkeys(skus, 0)  # applied adjustments minus units sold

    for step in range(5000):
        sku, order = rng.choice(skus), rng.choice(orders)
        before = levels[sku]
        hold = holds.get((sku, order))
        op = rng.choice(["reserve", "reserve", "release", "commit", "adjust"])
        if op == "reserve":
            new, new_hold, events = reserve(
                before, hold, ReserveLine(order, sku, rng.randint(1, 8)), AT
            )
        elif op == "release":
            new, new_hold, events = release(before, hold, ReleaseLine(order, sku), AT)
        elif op == "commit":
            new, new_hold, events = commit(before, hold, CommitLine(order, sku), AT)
        else:
            delta = rng.randint(-6, 10)
            new, events = adjust(before, AdjustStock(sku, f"adj-{step}", delta, "correction"), AT)
            new_hold = hold
            if of_type(events, StockAdjusted):
                ledger[sku] += delta
                stocked[sku] += max(delta, 0)
        # A repeated answer (no stock change) reports a sale made before, not a new one.
        committed = sum(e.quantity for e in events if isinstance(e, LineCommitted)) if new is not before else 0
        sold[sku] += committed
        ledger[sku] -= committed

        assert 0 <= new.reserved <= new.on_hand, f"step {step}: {new}"
        assert new.version in (before.version, before.version + 1)
        assert (new.version == before.version + 1) == bool(of_type(events, StockLevelChanged))
        assert sold[sku] <= stocked[sku]
        assert new.on_hand == ledger[sku]
        levels[sku] = new
        if new_hold is not None:
            holds[(sku, order)] = new_hold

    for sku in skus:
        live = sum(
            h.quantity for (s, _), h in holds.items() if s == sku and h.state is HoldState.HELD
        )
        assert levels[sku].reserved == live
    assert sum(sold.values()) > 0
