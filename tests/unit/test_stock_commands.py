"""The reservation agent's rule for one stock command, and for one delivered again
(services/stock_commands.py), case by case on a table held in a dict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from orion_streams import records
from orion_streams.domain import commands as c
from orion_streams.domain import events as e
from orion_streams.domain.stock import HoldState, StockLevel
from orion_streams.services import stock_commands

SKU, ORDER, AT, NOW = "SKU-1", "o-1", "2026-12-04T00:00:00.000Z", 1_700_000_000.0
HOLD = records.hold_key(SKU, ORDER)
MARK = records.adjustment_key(SKU, "adj-1")


def row(on_hand: int, reserved: int, position: Any = None, key: str | None = None, value: Any = None) -> list[Any]:
    """A stock row as stored (threshold 0, version 1)."""
    return records.stock_entry(StockLevel(SKU, on_hand, reserved, 0, 1), position, key, value)


def hold(quantity: int, state: HoldState, closed: bool = False) -> list[Any]:
    stored: list[Any] = [quantity, state.value]
    return [*stored, NOW] if closed else stored


HELD = hold(2, HoldState.HELD)


@dataclass
class Case:
    name: str
    command: Any
    table: dict[str, Any]  # rows before; the SKU's stock row under SKU
    position: Any
    writes: list[tuple[str, Any]]  # rows written, in order (the stock row compared by level, position, hold)
    answers: list[type]  # types of the outputs, in order
    moved: bool = False
    closed: str | None = None
    ignored: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("reserve, first delivery: the row (with its position and hold) before the hold",
         c.ReserveLine(ORDER, SKU, 2), {SKU: row(10, 0, 5)}, 7,
         [(SKU, row(10, 2, 7, HOLD, HELD)), (HOLD, HELD)], [e.LineReserved, e.StockLevelChanged], moved=True),
    Case("reserve, not enough: a rejected hold, closed, the row untouched",
         c.ReserveLine(ORDER, SKU, 20), {SKU: row(10, 0, 5)}, 7,
         [(HOLD, hold(20, HoldState.REJECTED, closed=True))], [e.LineRejected], closed=HOLD),
    Case("reserve delivered again after row and hold landed: answered from the hold, nothing written",
         c.ReserveLine(ORDER, SKU, 2), {SKU: row(10, 2, 7, HOLD, HELD), HOLD: HELD}, 7,
         [], [e.LineReserved]),
    Case("reserve delivered again after only the row landed: the hold written again from the row, stock unmoved",
         c.ReserveLine(ORDER, SKU, 2), {SKU: row(10, 2, 7, HOLD, HELD)}, 7,
         [(HOLD, HELD)], [e.LineReserved]),
    Case("an older event delivered again (not the row's): answered from its own hold",
         c.ReserveLine(ORDER, SKU, 2), {SKU: row(10, 5, 9, records.hold_key(SKU, "o-2"), HELD), HOLD: HELD}, 7,
         [], [e.LineReserved]),
    Case("an event at the row's position that would move stock again: ignored, nothing answered",
         c.ReserveLine(ORDER, SKU, 2), {SKU: row(10, 2, 7, records.hold_key(SKU, "o-2"), HELD),
                                        records.hold_key(SKU, "o-2"): HELD}, 7,
         [], [], ignored=True),
    Case("the same, with the row's hold missing: the hold is restored, the command still ignored",
         c.ReserveLine(ORDER, SKU, 2), {SKU: row(10, 2, 7, records.hold_key(SKU, "o-2"), HELD)}, 7,
         [(records.hold_key(SKU, "o-2"), HELD)], [], ignored=True),
    Case("positions of batch items compare whole: [7, 1] is not [7, 0]",
         c.ReserveLine(ORDER, SKU, 2), {SKU: row(10, 0, [7, 0])}, [7, 1],
         [(SKU, row(10, 2, [7, 1], HOLD, HELD)), (HOLD, HELD)], [e.LineReserved, e.StockLevelChanged], moved=True),
    Case("release of a held hold: units back, the hold closed",
         c.ReleaseLine(ORDER, SKU), {SKU: row(10, 2, 7, HOLD, HELD), HOLD: HELD}, 8,
         [(SKU, row(10, 0, 8, HOLD, hold(2, HoldState.RELEASED, True))), (HOLD, hold(2, HoldState.RELEASED, True))],
         [e.LineReleased, e.StockLevelChanged], moved=True, closed=HOLD),
    Case("release before any reservation: a released tombstone so a late reserve holds nothing",
         c.ReleaseLine(ORDER, SKU), {SKU: row(10, 0, 5)}, 8,
         [(HOLD, hold(0, HoldState.RELEASED, True))], [e.LineReleased], closed=HOLD),
    Case("commit of a held hold: sold, on hand and reserved both down",
         c.CommitLine(ORDER, SKU), {SKU: row(10, 2, 7, HOLD, HELD), HOLD: HELD}, 8,
         [(SKU, row(8, 0, 8, HOLD, hold(2, HoldState.COMMITTED, True))), (HOLD, hold(2, HoldState.COMMITTED, True))],
         [e.LineCommitted, e.StockLevelChanged], moved=True, closed=HOLD),
    Case("commit delivered again after it landed: answered from the hold, nothing sold twice",
         c.CommitLine(ORDER, SKU), {SKU: row(8, 0, 8, HOLD, hold(2, HoldState.COMMITTED, True)),
                                    HOLD: hold(2, HoldState.COMMITTED, True)}, 8,
         [], [e.LineCommitted]),
    Case("adjustment, first delivery: the row, then its marker, closed",
         c.AdjustStock(SKU, "adj-1", 5, "restock"), {SKU: row(10, 0, 5)}, 8,
         [(SKU, row(15, 0, 8, MARK, ["adjustment", "applied", NOW])), (MARK, ["adjustment", "applied", NOW])],
         [e.StockLevelChanged, e.StockAdjusted], moved=True, closed=MARK),
    Case("adjustment refused (it would leave -5 available): only the marker",
         c.AdjustStock(SKU, "adj-1", -15, "damage"), {SKU: row(10, 0, 5)}, 8,
         [(MARK, ["adjustment", "rejected", NOW])], [e.AdjustmentRejected], closed=MARK),
    Case("adjustment delivered again: its marker is there, nothing done",
         c.AdjustStock(SKU, "adj-1", 5, "restock"), {SKU: row(15, 0, 8, MARK, ["adjustment", "applied", NOW]),
                                                     MARK: ["adjustment", "applied", NOW]}, 9,
         [], []),
    Case("adjustment delivered again after only the row landed: the marker restored, stock unmoved",
         c.AdjustStock(SKU, "adj-1", 5, "restock"), {SKU: row(15, 0, 8, MARK, ["adjustment", "applied", NOW])}, 8,
         [(MARK, ["adjustment", "applied", NOW])], []),
    Case("a SKU never stocked: the first reservation is refused",
         c.ReserveLine(ORDER, SKU, 1), {}, 0,
         [(HOLD, hold(1, HoldState.REJECTED, True))], [e.LineRejected], closed=HOLD),
]


def _comparable(key: str, value: Any) -> Any:
    """A stock row's level without its version (the rule bumps it), with its position and hold."""
    if key == SKU and value:
        return [*value[:2], *value[4:]]
    return value


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_stock_command(case: Case) -> None:
    before = {k: list(v) if isinstance(v, list) else v for k, v in case.table.items()}
    step = stock_commands.apply(case.command, case.table.get, case.position, NOW, AT)

    assert [(k, _comparable(k, v)) for k, v in step.writes] == [(k, _comparable(k, v)) for k, v in case.writes]
    assert [type(m) for m in step.outputs] == case.answers
    assert step.moved is case.moved
    assert step.closed == case.closed
    assert (step.ignored is not None) is case.ignored
    assert case.table == before  # the rule only reads the table


def test_every_redelivery_of_a_landed_step_changes_nothing() -> None:
    """Whatever a first delivery wrote, delivering the same event again to the table as it
    left it moves no stock and writes nothing: at least once delivery sells nothing twice."""
    for case in CASES:
        if case.ignored or not case.writes:
            continue
        table = dict(case.table)
        first = stock_commands.apply(case.command, table.get, case.position, NOW, AT)
        for key, value in first.writes:
            table[key] = value
        again = stock_commands.apply(case.command, table.get, case.position, NOW, AT)
        assert (again.writes, again.moved, again.ignored) == ([], False, None), case.name
        # ...and with only the stock row of the first delivery landed, its hold comes back.
        if first.moved:
            partial = dict(case.table)
            partial[SKU] = table[SKU]
            third = stock_commands.apply(case.command, partial.get, case.position, NOW, AT)
            assert not third.moved and third.ignored is None, case.name
            assert [k for k, _ in third.writes] == [k for k, _ in first.writes if k != SKU], case.name
