"""The watchdog (agents/watchdog.py) on a fake app and consumer: a source partition standing
still behind its fetch position is fetched again from its committed offset; one making
progress, caught up, or seen during a rebalance is left alone. Time is the test's."""

from __future__ import annotations

from typing import Any, cast

import pytest
from faust.types import TP

from orion_streams import topics as t
from orion_streams.agents import watchdog as watchdog_module
from orion_streams.agents.watchdog import (
    HEAD_GAP_AFTER,
    RECOVERY_REFETCH_AFTER,
    STALL_AFTER,
    Watchdog,
)
from orion_streams.config import Settings

from .fakes import FakeApp, FakeClock

ORDERS = TP(t.ORDERS.name, 3)
PAYMENTS = TP(t.PAYMENT_REQUESTS.name, 3)
SAGAS = TP("orion-sagas-changelog", 1)
STOCK = TP("orion-inventory-changelog", 1)


def setup(monkeypatch: pytest.MonkeyPatch, **changes: Any) -> tuple[Watchdog, FakeApp, FakeClock]:
    clock = FakeClock().install(monkeypatch, watchdog_module)
    app = FakeApp()
    return Watchdog(cast(Any, app), Settings().with_changes(**changes)), app, clock


async def tick_at(dog: Watchdog, clock: FakeClock, seconds: float) -> None:
    """Tick `seconds` after the last tick."""
    clock.advance(seconds)
    await dog.tick()


async def test_a_partition_standing_still_behind_its_fetch_position_is_fetched_again_from_its_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dog, app, clock = setup(monkeypatch)
    app.consumer.assign(ORDERS, committed=5, position=8, end=10)
    await dog.tick()  # first seen
    await tick_at(dog, clock, STALL_AFTER - 1)
    assert app.consumer.seeks == []  # not long enough
    await tick_at(dog, clock, 1)
    assert app.consumer.seeks == [(ORDERS, 5)] and app.consumer.resumed == [ORDERS]
    # Fetched again: the next judgement starts afresh, a whole STALL_AFTER later.
    await tick_at(dog, clock, 1)
    await tick_at(dog, clock, STALL_AFTER - 1)
    assert app.consumer.seeks == [(ORDERS, 5)]
    await tick_at(dog, clock, 1)
    assert app.consumer.seeks == [(ORDERS, 5), (ORDERS, 5)]


async def test_a_partition_making_progress_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, app, clock = setup(monkeypatch)
    app.consumer.assign(ORDERS, committed=5, position=8, end=100)
    await dog.tick()
    for committed in range(6, 6 + 2 * int(STALL_AFTER)):
        app.consumer._committed_offset[ORDERS] = committed  # the agents commit as they go
        await tick_at(dog, clock, 1)
    assert app.consumer.seeks == []


async def test_a_partition_fetching_new_records_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, app, clock = setup(monkeypatch)
    app.consumer.assign(ORDERS, committed=5, position=8, end=100)
    await dog.tick()
    for position in range(9, 9 + 2 * int(STALL_AFTER)):
        app.consumer.aio.positions[ORDERS] = position
        await tick_at(dog, clock, 1)
    assert app.consumer.seeks == []


async def test_a_caught_up_partition_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, app, clock = setup(monkeypatch)
    app.consumer.assign(ORDERS, committed=10, position=10, end=10)
    await dog.tick()
    await tick_at(dog, clock, 10 * STALL_AFTER)
    assert app.consumer.seeks == []


async def test_nothing_is_judged_during_a_rebalance_and_the_wait_starts_again_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dog, app, clock = setup(monkeypatch)
    app.consumer.assign(ORDERS, committed=5, position=8, end=10)
    await dog.tick()
    app.rebalancing = True
    await tick_at(dog, clock, STALL_AFTER + 1)
    await tick_at(dog, clock, STALL_AFTER + 1)
    assert app.consumer.seeks == []
    app.rebalancing = False
    await tick_at(dog, clock, 1)  # seen again, from now
    await tick_at(dog, clock, STALL_AFTER - 1)
    assert app.consumer.seeks == []
    await tick_at(dog, clock, 1)
    assert app.consumer.seeks == [(ORDERS, 5)]


async def test_nothing_is_judged_while_the_tables_recover(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, app, clock = setup(monkeypatch)
    app.consumer.assign(ORDERS, committed=5, position=8, end=10)
    app.recovered.value = False
    for _ in range(3):
        await tick_at(dog, clock, STALL_AFTER)
    assert app.consumer.seeks == []


async def test_nothing_is_judged_while_a_partition_is_still_being_positioned(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, app, clock = setup(monkeypatch)
    app.consumer.assign(ORDERS, committed=5, position=8, end=10)
    app.consumer.assign(TP(t.ORDERS.name, 4), committed=0, position=None, end=0)  # just assigned, empty
    await dog.tick()
    await tick_at(dog, clock, STALL_AFTER)
    assert app.consumer.seeks == []
    app.consumer.aio.positions[TP(t.ORDERS.name, 4)] = 0  # positioned at its commit
    await tick_at(dog, clock, 1)
    await tick_at(dog, clock, STALL_AFTER)
    assert app.consumer.seeks == [(ORDERS, 5)]


async def test_a_consumer_not_started_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, app, clock = setup(monkeypatch)
    app.consumer.assign(ORDERS, committed=5, position=8, end=10)
    app.consumer.broken = RuntimeError("not started")
    await dog.tick()
    await tick_at(dog, clock, STALL_AFTER)
    assert app.consumer.seeks == []


async def test_only_source_topics_are_fetched_again(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, app, clock = setup(monkeypatch)
    changelog = TP("orion-sagas-changelog", 3)
    app.consumer.assign(changelog, committed=5, position=8, end=10)
    app.consumer.assign(TP(t.DEAD_LETTERS.name, 0), committed=5, position=8, end=10)
    await dog.tick()
    await tick_at(dog, clock, STALL_AFTER)
    assert app.consumer.seeks == []


async def test_a_payment_partition_may_wait_on_the_provider_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, app, clock = setup(monkeypatch, payment_timeout=20.0, payment_void_timeout=30.0)
    assert dog.stall_after_payments == 60.0  # twice the longest payment budget
    app.consumer.assign(PAYMENTS, committed=5, position=8, end=10)
    await dog.tick()
    await tick_at(dog, clock, STALL_AFTER)
    await tick_at(dog, clock, 59.0 - STALL_AFTER)
    assert app.consumer.seeks == []
    await tick_at(dog, clock, 1)
    assert app.consumer.seeks == [(PAYMENTS, 5)]


async def test_a_dropped_event_at_the_commit_with_later_ones_done_is_fetched_again_soon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dog, app, clock = setup(monkeypatch)
    app.consumer.assign(ORDERS, committed=5, position=9, end=10)
    app.consumer._acked[ORDERS] = [6, 7, 8]  # done; offset 5 neither done nor in hand
    await dog.tick()
    await tick_at(dog, clock, HEAD_GAP_AFTER - 0.5)
    assert app.consumer.seeks == []
    await tick_at(dog, clock, 0.5)
    assert app.consumer.seeks == [(ORDERS, 5)]
    # Fetched again lately: the fetch is given STALL_AFTER to arrive before the next seek.
    await tick_at(dog, clock, 1)
    await tick_at(dog, clock, HEAD_GAP_AFTER)
    assert len(app.consumer.seeks) == 1


async def test_stopped_flow_is_resumed_with_the_refetch(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, app, clock = setup(monkeypatch)
    app.consumer.assign(ORDERS, committed=5, position=8, end=10)
    app.consumer.flow_active = False
    await dog.tick()
    await tick_at(dog, clock, STALL_AFTER)
    assert app.consumer.flow_resumed == 1 and app.flow_control.resumed == 1
    assert app.consumer.seeks == [(ORDERS, 5)]


async def test_flowing_consumers_are_not_resumed(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, app, clock = setup(monkeypatch)
    app.consumer.assign(ORDERS, committed=5, position=8, end=10)
    await dog.tick()
    await tick_at(dog, clock, STALL_AFTER)
    assert app.consumer.seeks == [(ORDERS, 5)]
    assert app.consumer.flow_resumed == 0 and app.flow_control.resumed == 0


# -- recovery_stalled_for: the liveness check's view ---------------------------------------------


async def test_recovery_stalled_for_counts_from_the_first_tick_that_saw_recovery_unfinished(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dog, app, clock = setup(monkeypatch, recovery_stall=300.0)
    began = clock.mono
    assert dog.recovery_stalled_for(began + 1_000) is None  # not recovering
    app.recovered.value = False
    await dog.tick()
    await tick_at(dog, clock, 100)  # still recovering: the start stays the first tick's
    assert dog.recovery_stalled_for(began + 300) is None  # within ORION_RECOVERY_STALL
    assert dog.recovery_stalled_for(began + 301) == 301
    app.recovered.value = True
    await tick_at(dog, clock, 1)
    assert dog.recovery_stalled_for(began + 1_000) is None  # recovered: healthy again


async def test_a_rebalance_counts_as_recovery_for_the_liveness_check(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, app, clock = setup(monkeypatch, recovery_stall=10.0)
    app.rebalancing = True
    await dog.tick()
    assert dog.recovery_stalled_for(clock.mono + 11) == 11


# -- table recovery that lost the records it waits for ----------------------------------------


def recovering(app: Any, **partitions: tuple[TP, int | None, int]) -> None:
    """Recovery is reading: per active changelog partition the last change applied (None:
    none yet) and the last one there is."""
    app.recovered.value = False
    app.rebalancing = True
    app.recovery.in_recovery = True
    for tp, applied, last in partitions.values():
        app.recovery.active_tps.add(tp)
        app.recovery.active_offsets[tp] = applied
        app.recovery.active_highwaters[tp] = last


async def test_a_changelog_partition_whose_recovery_applies_nothing_is_fetched_again_after_the_last_change_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dog, app, clock = setup(monkeypatch)
    recovering(app, sagas=(SAGAS, None, 85), stock=(STOCK, 40, 67))
    await dog.tick()  # first seen
    await tick_at(dog, clock, RECOVERY_REFETCH_AFTER - 1)
    assert app.consumer.seeks == []  # not long enough
    await tick_at(dog, clock, 1)
    # From the start for a partition with nothing applied, after the last change otherwise.
    assert sorted(app.consumer.seeks) == sorted([(SAGAS, 0), (STOCK, 41)])
    await tick_at(dog, clock, 1)
    assert len(app.consumer.seeks) == 2  # the next judgement starts afresh
    await tick_at(dog, clock, RECOVERY_REFETCH_AFTER - 1)
    assert len(app.consumer.seeks) == 4


async def test_a_recovery_applying_changes_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, app, clock = setup(monkeypatch)
    recovering(app, sagas=(SAGAS, 10, 5_000))
    await dog.tick()
    for applied in range(11, 11 + 3 * int(RECOVERY_REFETCH_AFTER)):
        app.recovery.active_offsets[SAGAS] = applied  # slow, but moving
        await tick_at(dog, clock, 1)
    assert app.consumer.seeks == []


async def test_a_recovered_partition_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, app, clock = setup(monkeypatch)
    recovering(app, sagas=(SAGAS, 85, 85), stock=(STOCK, 67, 67))  # waiting on the others
    for _ in range(3):
        await tick_at(dog, clock, RECOVERY_REFETCH_AFTER)
    assert app.consumer.seeks == []


@pytest.mark.parametrize("state", ["paused", "flow stopped", "not recovering"])
async def test_recovery_is_judged_only_while_it_reads(monkeypatch: pytest.MonkeyPatch, state: str) -> None:
    """Before recovery has found where to start it keeps its partitions paused and the flow
    stopped; a partition is judged only while recovery reads it."""
    dog, app, clock = setup(monkeypatch)
    recovering(app, sagas=(SAGAS, None, 85))
    if state == "paused":
        app.consumer._paused_partitions.add(SAGAS)
    elif state == "flow stopped":
        app.consumer.flow_active = False
    else:
        app.recovery.in_recovery = False
    for _ in range(3):
        await tick_at(dog, clock, RECOVERY_REFETCH_AFTER)
    assert app.consumer.seeks == []
    # Once it reads, the wait starts then, not at the first tick.
    app.consumer._paused_partitions.clear()
    app.consumer.flow_active = True
    app.recovery.in_recovery = True
    await tick_at(dog, clock, 1)
    await tick_at(dog, clock, RECOVERY_REFETCH_AFTER - 1)
    assert app.consumer.seeks == []
    await tick_at(dog, clock, 1)
    assert app.consumer.seeks == [(SAGAS, 0)]


async def test_recovery_judgement_starts_afresh_after_the_tables_recovered(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, app, clock = setup(monkeypatch)
    recovering(app, sagas=(SAGAS, 3, 85))
    await dog.tick()
    await tick_at(dog, clock, RECOVERY_REFETCH_AFTER - 1)
    app.recovered.value, app.rebalancing, app.recovery.in_recovery = True, False, False  # it caught up
    await tick_at(dog, clock, 1)
    recovering(app, sagas=(SAGAS, 3, 90))  # the next rebalance, same partition, same offset
    await tick_at(dog, clock, 1)
    await tick_at(dog, clock, RECOVERY_REFETCH_AFTER - 1)
    assert app.consumer.seeks == []
    await tick_at(dog, clock, 1)
    assert app.consumer.seeks == [(SAGAS, 4)]


async def test_a_failed_refetch_is_tried_again_on_a_later_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    dog, app, clock = setup(monkeypatch)
    recovering(app, sagas=(SAGAS, 3, 85))
    calls: list[dict[Any, int]] = []

    async def failing(offsets: dict[Any, int]) -> None:
        calls.append(offsets)
        raise RuntimeError("partition not assigned")

    app.consumer.seek_wait = failing  # type: ignore[method-assign]
    await dog.tick()
    await tick_at(dog, clock, RECOVERY_REFETCH_AFTER)
    await tick_at(dog, clock, RECOVERY_REFETCH_AFTER)
    assert calls == [{SAGAS: 4}, {SAGAS: 4}]
