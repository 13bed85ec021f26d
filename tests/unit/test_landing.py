"""A table-writing agent's batches land in the background, in order: sends acknowledged, then
table changes, then the events acknowledged; the agent goes on with the next batch meanwhile
(agents/common.py, handle_in_batches)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from orion_streams import records
from orion_streams.agents import common
from orion_streams.domain import events as e

from .fakes import Event, Where, until


class Stream:
    """Events fed by the test; acknowledgements recorded."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.acked: list[int] = []

    def noack(self) -> Stream:
        return self

    async def events(self) -> Any:
        while True:
            yield await self.queue.get()

    async def ack(self, event: Event) -> None:
        self.acked.append(event.message.offset)


class Producer:
    """Sends whose acknowledgement the test gives, one by one."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None, _ts: Any, headers: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


class Table:
    """The changes a batch made, taken at its flush, written when it lands."""

    def __init__(self) -> None:
        self.unsent: list[int] = []
        self.written: list[int] = []

    def take(self) -> list[int]:
        taken, self.unsent = self.unsent, []
        return taken

    async def write(self, changes: list[int]) -> None:
        self.written.extend(changes)


@pytest.fixture
async def agent(monkeypatch: pytest.MonkeyPatch) -> Any:
    producer = Producer()
    bus = common.Bus(lambda: producer, 12)
    monkeypatch.setattr(common, "BATCH_SIZE", 1)  # a batch per event
    monkeypatch.setattr(common, "BATCH_WITHIN", 3600)  # no flush but the full batch's
    stream, table, handled = Stream(), Table(), []

    async def handle(event: Any, outbox: common.Outbox) -> None:
        offset = event.message.offset
        handled.append(offset)
        table.unsent.append(offset)
        outbox.send("order-status", f"o{offset}", e.LineReserved(f"o{offset}", "A", 1), [])

    def feed(offset: int) -> None:
        value = records.encode(e.LineReserved(f"o{offset}", "A", 1))
        stream.queue.put_nowait(Event(f"o{offset}".encode(), value, [], Where("order-events", 0, offset)))

    task = asyncio.ensure_future(common.handle_in_batches(stream, handle, bus, table, what="test agent"))  # type: ignore[arg-type]
    yield producer, stream, table, handled, feed, task
    task.cancel()


async def test_the_next_batch_is_handled_while_one_lands_and_batches_land_in_order(agent: Any) -> None:
    producer, stream, table, handled, feed, _ = agent
    feed(1)
    feed(2)
    # Batch 2 was handled and sent while batch 1's send is still unacknowledged.
    await until(lambda: handled == [1, 2] and len(producer.futures) == 2, "both batches handled and sent")
    assert table.written == [] and stream.acked == []
    # Batch 2's send lands first: its table change still waits for batch 1's.
    producer.futures[1].set_result(None)
    feed(3)  # the agent waits for batch 1 before it takes a third: one batch in the air
    for _ in range(100):  # let every ready task run: a wrong order would show now
        await asyncio.sleep(0)
    assert table.written == [] and stream.acked == [] and handled == [1, 2] and len(producer.futures) == 2
    producer.futures[0].set_result(None)
    await until(lambda: stream.acked == [1, 2], "batches 1 and 2 acknowledged")
    assert table.written == [1, 2]
    await until(lambda: handled == [1, 2, 3] and len(producer.futures) == 3, "batch 3 handled and sent")
    assert stream.acked == [1, 2]  # not before its send lands
    producer.futures[2].set_result(None)
    await until(lambda: stream.acked == [1, 2, 3], "batch 3 acknowledged")
    assert table.written == [1, 2, 3]


async def test_a_batch_that_cannot_land_stops_the_agent_and_nothing_after_it_is_acknowledged(agent: Any) -> None:
    producer, stream, table, handled, feed, task = agent
    feed(1)
    await until(lambda: len(producer.futures) == 1, "batch 1 sent")
    producer.futures[0].set_exception(KafkaTimeoutError())
    feed(2)
    with pytest.raises(KafkaTimeoutError):
        async with asyncio.timeout(5):
            await task
    assert stream.acked == [] and table.written == []


def test_now_is_the_millisecond_shared_by_the_events_within_it(monkeypatch: pytest.MonkeyPatch) -> None:
    wall = [1_764_756_000.1234]
    monkeypatch.setattr(common.time, "time", lambda: wall[0])
    first = common.now()
    assert (first.iso, first.epoch) == ("2025-12-03T10:00:00.123Z", 1_764_756_000.123)
    wall[0] += 0.0005  # the same millisecond: the same clock
    assert common.now() is first
    wall[0] += 0.001
    assert common.now().iso == "2025-12-03T10:00:00.124Z"
