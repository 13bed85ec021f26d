"""Batch records: Orion's requests and answers, one record per batch and partition."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from orion_streams import records
from orion_streams.agents import common
from orion_streams.domain import commands as c
from orion_streams.domain import events as e
from orion_streams.domain.orders import OrderStatus

from .fakes import Event, Where

HEADERS = [("correlation-id", b"corr-1"), ("actor", b"user:\xc3\xa9lise")]
PARTITIONS = 12


def test_a_batch_record_carries_each_message_with_its_key_and_headers() -> None:
    items = [("A", records.encode(c.ReserveLine("o1", "A", 2)), HEADERS), ("B", records.encode(c.ReleaseLine("o2", "B")), [])]
    decoded = records.decode_batch(records.encode_batch(items))
    assert [(key, headers) for key, headers, _ in decoded] == [("A", HEADERS), ("B", [])]
    assert [records.decode(value) for _, _, value in decoded] == [c.ReserveLine("o1", "A", 2), c.ReleaseLine("o2", "B")]


@pytest.mark.parametrize("raw", [
    b"not json", b"[]", b'{"type":"Batch"}', b'{"type":"Other","items":[]}',
    b'{"type":"Batch","items":[{"headers":[]}]}', b'{"type":"Batch","items":[{"key":"A","headers":[["a"]]}]}',
])
def test_a_batch_record_that_cannot_be_read_is_refused_with_a_reason(raw: bytes) -> None:
    with pytest.raises(records.BadRecord):
        records.decode_batch(raw)


def test_an_item_that_is_not_a_message_is_refused_like_a_record() -> None:
    [(_, _, value)] = records.decode_batch(b'{"type":"Batch","items":[{"key":"A","headers":[],"value":[1]}]}')
    with pytest.raises(records.BadRecord, match="JSON object"):
        records.decode(value)
    [(_, _, value)] = records.decode_batch(b'{"type":"Batch","items":[{"key":"A","headers":[],"value":{"type":"X\\u0000"}}]}')
    with pytest.raises(records.BadRecord, match="U\\+0000"):
        records.decode(value)


def test_unpack_gives_a_single_record_as_itself_and_a_batch_as_items_with_their_positions() -> None:
    single = Event(b"A", records.encode(c.ReserveLine("o1", "A", 1)), {}, Where("stock-requests", 3, 41))
    assert common.unpack(single) == [single] and common.position(single) == 41
    value = records.encode_batch([("A", records.encode(c.ReserveLine("o1", "A", 1)), HEADERS),
                                  ("B", records.encode(c.ReserveLine("o2", "B", 1)), [])])
    batch = Event(None, value, [(records.BATCH_HEADER, b"1")], Where("stock-requests", 3, 42))
    first, second = common.unpack(batch)
    assert (first.key, second.key) == (b"A", b"B")
    assert common.header(first, "correlation-id") == "corr-1" and common.identity(second) == []
    assert (first.message.partition, first.message.offset) == (3, 42)
    assert [common.position(first), common.position(second)] == [[42, 0], [42, 1]]
    # A stock row stores the position as JSON: read back, it still equals the item's.
    assert orjson.loads(orjson.dumps(common.position(second))) == common.position(second)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, int | None, Any]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None, _ts: Any, headers: Any) -> Any:
        self.sent.append((topic, key, value, partition, headers))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(Where(topic, partition if partition is not None else -1, len(self.sent)))
        return future


async def test_the_outbox_sends_requests_and_answers_as_one_batch_record_per_topic_and_partition() -> None:
    producer = FakeProducer()
    skus = [f"SKU-{i}" for i in range(40)]
    by_partition: dict[int, list[str]] = {}
    for sku in skus:
        by_partition.setdefault(common.partition_for(sku, PARTITIONS), []).append(sku)
    landed: list[tuple[str, Any]] = []
    outbox = common.Outbox(common.Bus(lambda: producer, PARTITIONS))
    for sku in skus:
        outbox.send("stock-requests", sku, c.ReserveLine("o1", sku, 1), HEADERS,
                    on_sent=lambda md, sku=sku: landed.append((sku, md)))
    outbox.send("order-events", "o1", e.LineReserved("o1", "SKU-0", 1), [])
    status = e.OrderStatusChanged("o1", "u", "a@b.c", OrderStatus.PENDING, None, (), 0, "EUR", None, 1, "t", "t")
    outbox.send("order-status", "o1", status, [])
    await outbox.flush()

    batches = [s for s in producer.sent if s[0] == "stock-requests"]
    assert sorted(p for *_, p, _ in batches) == sorted(by_partition)
    for _, key, value, partition, headers in batches:
        assert key is None and headers == [(records.BATCH_HEADER, b"1")]
        assert [k for k, _, _ in records.decode_batch(value)] == by_partition[partition]  # in send order
    [events] = [s for s in producer.sent if s[0] == "order-events"]
    assert [k for k, _, _ in records.decode_batch(events[2])] == ["o1"]
    # Published events travel in batch records too, on the key's partition.
    [published] = [s for s in producer.sent if s[0] == "order-status"]
    assert published[1] is None and published[3] == common.partition_for("o1", PARTITIONS)
    assert [(k, records.decode(v)) for k, _, v in records.decode_batch(published[2])] == [("o1", status)]
    # Published events are handed to the producer before requests and answers (a stock level
    # before the answers that count on it).
    assert [s[0] for s in producer.sent][0] == "order-status"
    # Each request is told where its batch record landed.
    assert sorted(sku for sku, _ in landed) == sorted(skus)
    assert all(md.partition == common.partition_for(sku, PARTITIONS) for sku, md in landed)


def test_batch_records_are_cut_by_items_and_by_bytes() -> None:
    small = [(f"k{i}", b"x" * 10) for i in range(records.BATCH_LIMIT * 2 + 1)]
    assert [len(chunk) for chunk in records.chunks(small)] == [records.BATCH_LIMIT, records.BATCH_LIMIT, 1]
    third = records.BATCH_BYTES // 3
    big = [(f"k{i}", b"x" * third) for i in range(7)]
    cut = list(records.chunks(big))
    assert [len(chunk) for chunk in cut] == [2, 2, 2, 1]  # three of them would pass the bound
    assert [item for chunk in cut for item in chunk] == big  # in order, nothing lost
    huge = [("k", b"x" * (records.BATCH_BYTES * 2))]
    assert list(records.chunks(huge)) == [huge]  # one message too big for the bound goes alone


async def test_the_projection_reads_each_item_of_a_batch_record_and_parks_a_bad_one() -> None:
    from orion_streams.agents import projection
    from orion_streams.agents.notify import Emails
    from orion_streams.config import Settings
    from orion_streams.domain.catalog import Catalog

    parked: list[tuple[Any, str]] = []

    async def send(key: bytes | None, value: bytes, headers: Any) -> None:
        parked.append((orjson.loads(value), dict(headers)["reason-class"].decode()))

    batch = projection.Projection(None, Emails(Settings(), Catalog))  # type: ignore[arg-type]  # no writes here
    projector = projection.Projector(batch, send)
    status = e.OrderStatusChanged("o1", "u", "a@b.c", OrderStatus.PENDING, None, (), 0, "EUR", None, 1, "t", "t")
    level = e.StockLevelChanged("A", 10, 1, 2, 3, "t")
    value = records.encode_batch([("o1", records.encode(status), HEADERS), ("o2", b'{"type": "Nope"}', []),
                                  ("A", records.encode(level), [])])

    @dataclass
    class Record:
        topic: str
        partition: int
        offset: int
        timestamp: float | None
        key: bytes | None
        value: bytes
        headers: Any

    await projector.handle(Record("order-status", 2, 7, None, None, value, [(records.BATCH_HEADER, b"1")]))
    assert batch.statuses == [status] and batch.correlation_ids == ["corr-1"]
    assert batch.levels == [level]
    [(bad, kind)] = parked
    assert kind == "bad_record" and bad["key"] == "o2" and (bad["offset"], bad["item"]) == (7, 1)
    # A batch record that cannot be read is parked whole.
    await projector.handle(Record("order-status", 2, 8, None, None, b"{", [(records.BATCH_HEADER, b"1")]))
    assert parked[-1][1] == "bad_record" and parked[-1][0]["offset"] == 8
