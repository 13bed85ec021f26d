"""Changelog-backed tables; each has exactly one writing agent (see agents/).

Faust commits a source offset after flushing its producer buffer, but that flush gives up
after 0.1 s per message, so a worker killed at the wrong moment can commit past an event
whose table change never reached the changelog: the state is lost and the event is not
redelivered (seen in tests/e2e/test_failover.py). `DurableTable` sends each change itself
and the agent awaits it before its event is acknowledged.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import faust


class DurableTable(faust.Table[str, Any]):
    """A table whose writer sends each change to the changelog itself and waits for it.

    Faust's own path (`send_soon` into the producer buffer) neither guarantees the change
    is out before the offset commit nor, across a rebalance, that its future ever
    resolves; here the agent awaits `written()` before its event is acknowledged.
    """

    def __init__(self, *args: Any, coalesce: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.coalesce = coalesce
        self._unsent: list[tuple[int, Any, Any]] = []
        self._partition: int | None = None

    def put(self, event: Any, key: str, value: Any) -> None:
        """Set `key` for a change caused by `event`: its changelog entry goes to the
        event's partition, also when a batch of events is handled at once."""
        self._partition = event.message.partition
        try:
            self[key] = value
        finally:
            self._partition = None

    def on_key_set(self, key: Any, value: Any) -> None:
        partition = self._partition if self._partition is not None else self.partition_for_key(key)
        assert partition is not None  # always the causing event's partition
        self._maybe_set_key_ttl(key, partition)
        self._sensor_on_set(self, key, value)
        self._unsent.append((partition, key, value))

    def remove(self, key: str, partition: int) -> bool:
        """Forget `key` (owned by `partition`): a tombstone goes to the changelog, so
        compaction drops the key and recovery does not bring it back."""
        if key not in self:
            return False
        self._partition = partition
        try:
            del self[key]
        finally:
            self._partition = None
        return True

    def on_key_del(self, key: Any) -> None:
        partition = self._partition if self._partition is not None else self.partition_for_key(key)
        assert partition is not None  # always the owner's partition, given by `remove`
        self._maybe_del_key_ttl(key, partition)
        self._sensor_on_del(self, key)
        self._unsent.append((partition, key, None))

    async def written(self) -> None:
        """Send every change made so far and wait for the broker (acks=all)."""
        await self.write(self.take())

    def take(self) -> list[tuple[int, Any, Any]]:
        """The changes made since the last `take`, to `write` later in the order taken.

        In a coalescing table, a key changed several times since the last call is sent once,
        with its last value, at the place of its last change. Only for tables whose keys are
        independent: the inventory's stock row must reach the changelog before the holds it
        counts (agents/reservation.py), so it sends every change in order. Values are kept
        as they were when set (writers reassign values, they never change one in place)."""
        pending, self._unsent = self._unsent, []
        if self.coalesce:
            last = {(partition, key): i for i, (partition, key, _) in enumerate(pending)}
            if len(last) < len(pending):
                pending = [pending[i] for i in sorted(last.values())]
        return pending

    async def write(self, changes: list[tuple[int, Any, Any]]) -> None:
        """Send changes taken by `take` to the changelog and wait for the broker."""
        topic: Any = self.changelog_topic
        name, producer = topic.get_topic_name(), self.app.producer
        futures = []
        for partition, key, value in changes:
            raw_key, headers = topic.prepare_key(key, self.key_serializer, None, None)
            # None is a tombstone: no value at all, not JSON null.
            raw_value = None if value is None else topic.prepare_value(value, self.value_serializer, None, headers)[0]
            futures.append(await producer.send(name, raw_key, raw_value, partition, None, headers))
        if futures:
            await asyncio.gather(*futures)


@dataclass(frozen=True)
class Tables:
    """A worker's tables.

    `sagas`: saga state by order id, co-partitioned with `orders` and `order-events`.
    `inventory`: stock by SKU (key "sku") and each order's hold on a SKU (key
    "sku\x1forder"), written only by the reservation agent while it handles a
    `stock-requests` event for that SKU. One table, so a SKU's stock row and the hold written
    after it share one changelog partition and reach it in that order (agents/reservation.py).
    """

    sagas: DurableTable
    inventory: DurableTable


def create_tables(app: faust.App, partitions: int) -> Tables:
    """The tables, added to `app`."""

    def table(name: str, *, coalesce: bool = False) -> DurableTable:
        made = DurableTable(
            app, name=name, default=None, partitions=partitions, key_type=str,
            beacon=app.tables.beacon, coalesce=coalesce,
        )
        app.tables.add(made)
        return made

    return Tables(sagas=table("sagas", coalesce=True), inventory=table("inventory"))


__all__ = ["DurableTable", "Tables", "create_tables"]
