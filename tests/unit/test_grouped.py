"""Group commit: calls made at about the same time share one write."""

from __future__ import annotations

import asyncio

import pytest

from orion_streams.services.grouped import Grouped


async def test_calls_made_together_share_one_write_and_those_made_during_it_share_the_next() -> None:
    writes: list[list[int]] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def write(items: list[int]) -> None:
        writes.append(items)
        started.set()
        if len(writes) == 1:
            await release.wait()

    grouped = Grouped(write)
    first = [asyncio.ensure_future(grouped.submit(i)) for i in range(3)]
    await asyncio.wait_for(started.wait(), 5)
    # Submitted while the first write is held: they start before the write is released
    # (tasks run in the order they were scheduled).
    later = [asyncio.ensure_future(grouped.submit(i)) for i in range(3, 5)]
    assert writes == [[0, 1, 2]] and not any(f.done() for f in first)
    release.set()
    await asyncio.gather(*first, *later)
    assert writes == [[0, 1, 2], [3, 4]]


async def test_every_caller_of_a_failed_write_sees_its_error_and_the_next_write_still_runs() -> None:
    calls = 0

    async def write(items: list[str]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database away")

    grouped = Grouped(write)
    results = await asyncio.gather(grouped.submit("a"), grouped.submit("b"), return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
    await grouped.submit("c")
    assert calls == 2


async def test_a_write_carries_at_most_the_limit() -> None:
    writes: list[list[int]] = []

    async def write(items: list[int]) -> None:
        writes.append(items)

    grouped = Grouped(write, limit=2)
    await asyncio.gather(*(grouped.submit(i) for i in range(5)))
    assert writes == [[0, 1], [2, 3], [4]]


async def test_a_caller_that_gives_up_does_not_stop_the_others() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    written: list[list[int]] = []

    async def write(items: list[int]) -> None:
        started.set()
        await release.wait()
        written.append(items)

    grouped = Grouped(write)
    impatient = asyncio.ensure_future(grouped.submit(1))
    patient = asyncio.ensure_future(grouped.submit(2))
    await asyncio.wait_for(started.wait(), 5)  # both are in the write under way
    impatient.cancel()
    release.set()
    await patient
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert written == [[1, 2]]
