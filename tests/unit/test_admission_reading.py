"""The reading behind the door of `POST /v1/orders` (web/admission.py): the load read from
the read model, this worker's share of the order partitions, the gauges Prometheus scrapes,
and the timer that takes a reading. Fake runtime and app: no database, no broker."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import TopicPartition

from orion_streams import metrics
from orion_streams import topics as t
from orion_streams.services.admission import Admission, Load
from orion_streams.web import admission
from orion_streams.web.admission import QUEUE_SKIP, READ_EVERY, AdmissionGauges, read_load, share_of

from .web_fakes import SETTINGS, FakeRuntime


def door() -> Admission:
    return Admission(max_decision_delay=5.0, max_in_flight=100)


async def test_a_reading_takes_the_orders_in_flight_and_the_age_of_the_queue() -> None:
    runtime, gate = FakeRuntime(SETTINGS), door()
    runtime.store.in_flight = (42, datetime.now(UTC) - timedelta(seconds=3))
    before = time.monotonic()
    await read_load(cast(Any, runtime), gate, 0.25)
    load = gate.load
    assert load is not None
    assert (load.in_flight, load.share) == (42, 0.25)
    assert 3.0 <= load.queue_delay < 4.0
    assert before <= load.at <= time.monotonic()
    assert runtime.store.in_flight_asked == [QUEUE_SKIP]


@pytest.mark.parametrize("ahead", [None, 30.0])
async def test_no_queue_or_a_head_from_the_future_waits_nothing(ahead: float | None) -> None:
    # The head's time is taken when the test runs, not when it is collected (minutes earlier).
    head = None if ahead is None else datetime.now(UTC) + timedelta(seconds=ahead)
    runtime, gate = FakeRuntime(SETTINGS), door()
    runtime.store.in_flight = (3, head)
    await read_load(cast(Any, runtime), gate, 1.0)
    assert gate.load is not None and (gate.load.in_flight, gate.load.queue_delay) == (3, 0.0)


async def test_a_reading_counts_from_itself_not_the_orders_admitted_before_it() -> None:
    runtime, gate = FakeRuntime(SETTINGS), door()
    gate.update(Load(10, 0.0, time.monotonic()))
    for _ in range(5):
        gate.admitted()
    assert gate.snapshot(time.monotonic())["in_flight"] == 15
    runtime.store.in_flight = (12, None)
    await read_load(cast(Any, runtime), gate, 1.0)
    assert gate.snapshot(time.monotonic())["in_flight"] == 12


async def test_a_reading_at_the_limit_closes_the_door_and_a_lower_one_opens_it() -> None:
    runtime, gate = FakeRuntime(SETTINGS), door()
    runtime.store.in_flight = (100, None)
    await read_load(cast(Any, runtime), gate, 1.0)
    refusal = gate.verdict(time.monotonic())
    assert refusal is not None and refusal.reason == "in_flight"
    runtime.store.in_flight = (1, None)
    await read_load(cast(Any, runtime), gate, 1.0)
    assert gate.verdict(time.monotonic()) is None


@pytest.mark.parametrize("broken", ["store", "runtime"])
async def test_a_failed_reading_keeps_the_last_one_to_age(broken: str) -> None:
    runtime, gate = FakeRuntime(SETTINGS), door()
    last = Load(100, 0.0, time.monotonic())
    gate.update(last)
    if broken == "store":
        runtime.store.in_flight = ConnectionRefusedError("database restarting")
    else:
        runtime.ready_error = RuntimeError("not started")
    await read_load(cast(Any, runtime), gate, 1.0)  # does not raise
    assert gate.load is last
    # Once it is too old to trust, the door opens: monitoring trouble must not stop sales.
    assert gate.verdict(last.at) is not None
    assert gate.verdict(last.at + gate.stale_after + 1) is None


def app_owning(*tps: TopicPartition) -> Any:
    return SimpleNamespace(assignor=SimpleNamespace(assigned_actives=lambda: set(tps)))


def test_the_share_counts_only_the_order_partitions() -> None:
    app = app_owning(
        TopicPartition(t.ORDERS.name, 0), TopicPartition(t.ORDERS.name, 3),
        TopicPartition(t.ORDER_STATUS.name, 1), TopicPartition(t.STOCK_LEVELS.name, 0),
    )
    assert share_of(app, 12) == pytest.approx(2 / 12)
    assert share_of(app_owning(), 12) == 0.0


def test_the_share_is_nothing_before_an_assignment() -> None:
    def not_yet() -> set[TopicPartition]:
        raise RuntimeError("not assigned")

    assert share_of(SimpleNamespace(assignor=SimpleNamespace(assigned_actives=not_yet)), 12) == 0.0
    assert share_of(SimpleNamespace(), 12) == 0.0


def gauges(gate: Admission) -> dict[str, float]:
    return {family.name: family.samples[0].value for family in AdmissionGauges(gate).collect()}


def test_the_gauges_of_a_door_without_a_reading() -> None:
    assert gauges(door()) == {
        "orion_admission_open": 1.0, "orion_admission_in_flight": 0.0, "orion_admission_queue_delay_seconds": 0.0,
    }


def test_the_gauges_of_a_closed_door() -> None:
    gate = door()
    gate.update(Load(120, 2.5, time.monotonic()))
    gate.admitted()
    assert gauges(gate) == {
        "orion_admission_open": 0.0, "orion_admission_in_flight": 121.0, "orion_admission_queue_delay_seconds": 2.5,
    }


async def test_register_reads_the_load_on_a_timer_with_the_workers_share(monkeypatch: pytest.MonkeyPatch) -> None:
    timers: list[tuple[float, str, Callable[[], Awaitable[None]]]] = []

    def timer(*, interval: float, name: str) -> Callable[[Callable[[], Awaitable[None]]], None]:
        return lambda fn: timers.append((interval, name, fn))

    collectors: list[Any] = []
    monkeypatch.setattr(metrics, "register_collector", collectors.append)
    runtime = FakeRuntime(SETTINGS)
    runtime.store.in_flight = (7, None)
    app = app_owning(TopicPartition(t.ORDERS.name, 1))
    app.timer = timer
    orion = SimpleNamespace(runtime=runtime, app=app, settings=SimpleNamespace(partitions=4))
    admission.register(cast(Any, orion))

    ((interval, _, take_reading),) = timers
    assert interval == READ_EVERY
    ((collector,),) = [collectors]
    assert isinstance(collector, AdmissionGauges) and collector.door is runtime.admission
    await take_reading()
    load = runtime.admission.load
    assert load is not None and (load.in_flight, load.share) == (7, 0.25)
