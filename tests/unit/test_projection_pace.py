"""The projection's pace: a transaction at most every ORION_PROJECTION_INTERVAL while records
come a few at a time, none held back once a backlog fills its batches."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from orion_streams.agents import projection
from orion_streams.agents.projection import BATCH_SIZE, pause_before_batch
from orion_streams.config import Settings


def test_the_pause_keeps_transactions_an_interval_apart_unless_a_batch_was_full() -> None:
    assert pause_before_batch(began=10.0, full=False, interval=0.05, now=10.01) == pytest.approx(0.04)
    assert pause_before_batch(began=10.0, full=False, interval=0.05, now=10.2) == 0.0  # the interval has passed
    assert pause_before_batch(began=10.0, full=True, interval=0.05, now=10.01) == 0.0  # a backlog: at once
    assert pause_before_batch(began=0.0, full=False, interval=0.05, now=10.0) == 0.0  # the first batch
    assert pause_before_batch(began=10.0, full=False, interval=0.0, now=10.0) == 0.0  # pacing off


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


class FakeConsumer:
    """Hands out scripted batches (records per call), each taking `work` seconds to write."""

    def __init__(self, clock: FakeClock, sizes: list[int], work: float) -> None:
        self.clock, self.sizes, self.work = clock, list(sizes), work
        self.commits: list[dict[Any, int]] = []
        self.offset = 0

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        if not self.sizes:
            raise asyncio.CancelledError  # the script is over: stop the loop
        n = self.sizes.pop(0)
        got = [SimpleNamespace(offset=self.offset + i) for i in range(n)]
        self.offset += n
        return {("order-status", 0): got}

    def assignment(self) -> set[Any]:
        return set()

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.clock.now += self.work
        self.commits.append(offsets)


async def test_the_loop_waits_out_the_interval_after_a_small_batch_and_not_after_a_full_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(projection, "time", clock)
    monkeypatch.setattr(projection, "asyncio", SimpleNamespace(sleep=clock.sleep))
    settings = Settings().with_changes(projection_interval=0.05)

    async def handle(record: Any) -> None:
        return None

    async def written() -> None:
        return None

    projector = SimpleNamespace(handle=handle, batch=SimpleNamespace(written=written))
    consumer = FakeConsumer(clock, [3, BATCH_SIZE, 2, 1], work=0.01)
    with pytest.raises(asyncio.CancelledError):
        await projection.Consumer(settings, None, projector)._consume(consumer)  # type: ignore[arg-type]
    # The first batch at once; after the 3 records (10 ms of work) wait 40 ms; after the
    # full batch none; after the 2 records and after the 1 wait again.
    assert clock.slept == [0.04, 0.04, 0.04]
    assert [list(c.values())[0] for c in consumer.commits] == [3, 3 + BATCH_SIZE, 5 + BATCH_SIZE, 6 + BATCH_SIZE]
