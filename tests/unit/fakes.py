"""Fakes for driving the agents' handlers directly: no broker, no database, no Faust app.

The bus is Orion's own `Bus` over a producer that records what it is given, so a test sees
what would reach Kafka (batch records unpacked, dead letters parsed); the tables are dicts
that record their changes; the runtime answers from what a test sets.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest

from orion_streams import records
from orion_streams import topics as t
from orion_streams.agents import common
from orion_streams.domain import events as e
from orion_streams.domain.catalog import Catalog, Product
from orion_streams.domain.orders import RequestedLine
from orion_streams.partitioner import partition_for

PARTITIONS = 12
CATALOG = Catalog([
    Product("A", "Alpha lamp", 1_000, category="lighting"),
    Product("B", "Beta mouse", 250, category="peripherals"),
    Product("C", "Gamma hub", 4_000),
    Product("D", "Delta cable", 500, currency="USD"),
])
# What a customer's request carries: a correlation id, who asked, and with which roles.
HEADERS = [("correlation-id", b"corr-1"), ("actor", b"user:alice"), ("actor-roles", b"customer")]


async def until(condition: Callable[[], bool], what: str, deadline: float = 5.0) -> None:
    """Wait for a condition that running tasks make true, within a deadline."""
    give_up = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)  # poll interval under a deadline


# -- consumed records ---------------------------------------------------------------------


@dataclass
class Where:
    topic: str
    partition: int
    offset: int
    timestamp: float | None = None

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)


@dataclass
class Event:
    """A consumed record as the handlers read it (a Faust event's attributes)."""

    key: bytes | None
    value: Any
    headers: Any
    message: Where


def event(
    topic: str, key: str | None, value: Any, *, partition: int | None = None, offset: int = 0,
    headers: Iterable[tuple[str, bytes]] = HEADERS, timestamp: float | None = None,
) -> Event:
    """A record of `topic` keyed `key` carrying `value` (a message, encoded, or raw bytes),
    on the key's partition unless told otherwise."""
    raw = value if isinstance(value, bytes) else records.encode(value)
    if partition is None:
        partition = partition_for(key or "", PARTITIONS)
    return Event(key.encode() if key is not None else None, raw, list(headers), Where(topic, partition, offset, timestamp))


def placed(
    order_id: str = "o-1", lines: Iterable[tuple[str, int]] = (("A", 2),), *, email: str = "alice@example.com",
    placed_at: str = "", event_id: str = "ev-1",
) -> e.OrderPlaced:
    return e.OrderPlaced(
        event_id=event_id, order_id=order_id, user_id="u-1", email=email,
        lines=tuple(RequestedLine(sku, quantity) for sku, quantity in lines), payment_token="tok-1",
        placed_at=placed_at,
    )


# -- the bus ------------------------------------------------------------------------------


class Landed(NamedTuple):
    """Where a sent record landed (an aiokafka RecordMetadata's fields the agents read)."""

    topic: str
    partition: int
    offset: int


class Sent(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None
    headers: list[tuple[str, bytes]]


class FakeProducer:
    """Takes every send at once; each lands at the next offset of its partition."""

    def __init__(self, partitions: int = PARTITIONS) -> None:
        self.partitions = partitions
        self.sent: list[Sent] = []
        self._ends: dict[tuple[str, int], int] = {}

    async def send(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None, _timestamp: Any, headers: Any,
    ) -> asyncio.Future[Landed]:
        self.sent.append(Sent(topic, key, value, partition, list(headers or [])))
        if partition is None:
            partition = partition_for(key.decode(), self.partitions) if key is not None else 0
        offset = self._ends.get((topic, partition), 0)
        self._ends[(topic, partition)] = offset + 1
        future: asyncio.Future[Landed] = asyncio.get_running_loop().create_future()
        future.set_result(Landed(topic, partition, offset))
        return future


@dataclass
class DeadLetter:
    kind: str
    reason: str
    body: dict[str, Any]
    headers: dict[str, bytes]


@dataclass
class Message:
    """A message as a consumer of its topic would read it."""

    key: str
    message: Any
    headers: dict[str, bytes]
    partition: int | None


class FakeBus(common.Bus):
    """Orion's bus over a FakeProducer: what would reach Kafka, readable."""

    def __init__(self, partitions: int = PARTITIONS) -> None:
        self.fake = FakeProducer(partitions)
        super().__init__(lambda: self.fake, partitions)

    @property
    def dead_letters(self) -> list[DeadLetter]:
        out = []
        for sent in self.fake.sent:
            if sent.topic == t.DEAD_LETTERS.name:
                headers = dict(sent.headers)
                out.append(DeadLetter(headers["reason-class"].decode(), headers["reason"].decode(),
                                      json.loads(sent.value), headers))
        return out

    def kinds(self) -> list[str]:
        """The kinds of the dead letters sent, in order."""
        return [letter.kind for letter in self.dead_letters]

    def messages(self, topic: str) -> list[Message]:
        """Every message sent to `topic`, batch records unpacked, in send order."""
        out = []
        for sent in self.fake.sent:
            if sent.topic != topic:
                continue
            if dict(sent.headers).get(records.BATCH_HEADER) is not None:
                for key, headers, value in records.decode_batch(sent.value):
                    out.append(Message(key, records.decode(value, CATALOG), dict(headers), sent.partition))
            else:
                key = sent.key.decode() if sent.key is not None else ""
                out.append(Message(key, records.decode(sent.value, CATALOG), dict(sent.headers), sent.partition))
        return out

    def topics(self) -> set[str]:
        return {sent.topic for sent in self.fake.sent}


def sends(outbox: common.Outbox) -> list[tuple[str, str, Any]]:
    """What an outbox holds to send: (topic, key, message), superseded ones left out."""
    return [(topic, key, message) for topic, key, message, _ in (s for s in outbox.sends if s is not None)]


def sent_types(outbox: common.Outbox) -> list[tuple[str, str, type]]:
    return [(topic, key, type(message)) for topic, key, message in sends(outbox)]


# -- tables and the assignment ------------------------------------------------------------


class FakeTable(dict[str, Any]):
    """A DurableTable's writer's interface over a dict: changes recorded with their partition."""

    def __init__(self, rows: Mapping[str, Any] | None = None) -> None:
        super().__init__(rows or {})
        self.puts: list[tuple[int, str, Any]] = []
        self.removed: list[tuple[str, int]] = []
        self.written: list[tuple[int, str, Any]] = []
        self._unsent: list[tuple[int, str, Any]] = []

    def put(self, event: Any, key: str, value: Any) -> None:
        self[key] = value
        change = (event.message.partition, key, value)
        self.puts.append(change)
        self._unsent.append(change)

    def remove(self, key: str, partition: int) -> bool:
        if key not in self:
            return False
        del self[key]
        self.removed.append((key, partition))
        self._unsent.append((partition, key, None))
        return True

    def take(self) -> list[tuple[int, str, Any]]:
        taken, self._unsent = self._unsent, []
        return taken

    async def write(self, changes: list[tuple[int, str, Any]]) -> None:
        self.written.extend(changes)


class FakeAssignment:
    """The partitions this worker owns per topic; `settled = False`: a rebalance is under way."""

    def __init__(self, owned: Mapping[str, set[int]] | None = None, *, settled: bool = True) -> None:
        self.by_topic: dict[str, set[int]] = {k: set(v) for k, v in (owned or {}).items()}
        self.settled = settled

    def owned(self, topic: str) -> set[int] | None:
        return set(self.by_topic.get(topic, set())) if self.settled else None


# -- the runtime ----------------------------------------------------------------------------


class FakeStore:
    """The read model as the saga asks it: an order's status, whether it ever started."""

    def __init__(self) -> None:
        self.statuses: dict[str, str] = {}
        self.started: set[str] = set()
        self.asked: list[tuple[str, str]] = []

    async def order_status(self, order_id: str) -> str | None:
        self.asked.append(("status", order_id))
        return self.statuses.get(order_id)

    async def order_started(self, order_id: str) -> bool:
        self.asked.append(("started", order_id))
        return order_id in self.started


class FakeAdmission:
    def __init__(self) -> None:
        self.decisions: list[float] = []

    def decided(self, now: float, count: int = 1) -> None:
        self.decisions.extend([now] * count)


class FakeRuntime:
    """The catalog, the store, admission, and the offsets the broker would give."""

    def __init__(self, catalog: Catalog = CATALOG) -> None:
        self.catalog = catalog
        self.store = FakeStore()
        self.admission = FakeAdmission()
        # What a refresh of a stale catalog loads (None: the catalog is fresh, no refresh).
        self.refreshed_catalog: Catalog | None = None
        self.refreshes = 0
        self.committed: dict[tuple[str, int], int] = {}
        self.ends: dict[tuple[str, int], int] = {}

    async def refresh_catalog_if_stale(self) -> bool:
        if self.refreshed_catalog is None:
            return False
        self.refreshes += 1
        self.catalog = self.refreshed_catalog
        return True

    async def committed_offsets(self, tps: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {tp: self.committed[tp] for tp in tps if tp in self.committed}

    async def end_offsets(self, tps: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {tp: self.ends[tp] for tp in tps if tp in self.ends}


# -- time -----------------------------------------------------------------------------------


@dataclass
class FakeClock:
    """Wall and monotonic time for the modules it is installed in (their `time`)."""

    wall: float = 1_764_756_000.0
    mono: float = 1_000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def install(self, monkeypatch: pytest.MonkeyPatch, *modules: Any) -> FakeClock:
        for module in modules:
            monkeypatch.setattr(module, "time", self)
        return self


# -- a Faust worker's app and consumer, as the watchdog and the collectors read them ------------


@dataclass
class FakeAio:
    """aiokafka's consumer: each partition's fetch position (None: not positioned yet)."""

    positions: dict[Any, int | None] = field(default_factory=dict)

    @property
    def _subscription(self) -> Any:
        return SimpleNamespace(subscription=SimpleNamespace(assignment=SimpleNamespace(state_value=self._state)))

    def _state(self, tp: Any) -> Any:
        if tp not in self.positions:
            return None
        position = self.positions[tp]
        return SimpleNamespace(position=position, has_valid_position=position is not None)


class FakeConsumer:
    """Faust's consumer: assignment, end offsets, committed and acknowledged offsets, flow."""

    def __init__(self) -> None:
        self.aio = FakeAio()
        self._thread = SimpleNamespace(_ensure_consumer=lambda: self.aio)
        self.ends: dict[Any, int] = {}
        self._committed_offset: dict[Any, int] = {}
        self._acked: dict[Any, list[int]] = {}
        self.flow_active = True
        self.seeks: list[tuple[Any, int]] = []
        self._paused_partitions: set[Any] = set()
        self.resumed: list[Any] = []
        self.flow_resumed = 0
        self.broken: Exception | None = None  # raised by assignment(): not started

    def assign(self, tp: Any, *, committed: int, position: int | None, end: int) -> None:
        self._committed_offset[tp] = committed
        self.aio.positions[tp] = position
        self.ends[tp] = end

    def assignment(self) -> set[Any]:
        if self.broken is not None:
            raise self.broken
        return set(self.aio.positions)

    async def highwaters(self, *tps: Any) -> dict[Any, int]:
        return {tp: self.ends[tp] for tp in tps if tp in self.ends}

    def highwater(self, tp: Any) -> int | None:
        return self.ends.get(tp)

    def resume_flow(self) -> None:
        self.flow_resumed += 1
        self.flow_active = True

    def resume_partitions(self, tps: list[Any]) -> None:
        self.resumed.extend(tps)

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def seek_wait(self, offsets: dict[Any, int]) -> None:
        self.seeks.extend(offsets.items())


class FakeFlowControl:
    def __init__(self) -> None:
        self.active = True
        self.resumed = 0

    def is_active(self) -> bool:
        return self.active

    def resume(self) -> None:
        self.resumed += 1
        self.active = True


class FakeFlag:
    def __init__(self, value: bool = True) -> None:
        self.value = value

    def is_set(self) -> bool:
        return self.value


class FakeAssignor:
    def __init__(self) -> None:
        self.actives: set[Any] = set()
        self.standbys: set[Any] = set()

    def assigned_actives(self) -> set[Any]:
        return self.actives

    def assigned_standbys(self) -> set[Any]:
        return self.standbys


class FakeApp:
    """A Faust app as the watchdog and the collectors read it."""

    def __init__(self) -> None:
        self.consumer = FakeConsumer()
        self.rebalancing = False
        self.recovered = FakeFlag(True)
        # Table recovery: whether it runs, and per active changelog partition the last change
        # applied and the last one there is (Faust's Recovery keeps both by partition).
        self.recovery = SimpleNamespace(
            completed=self.recovered, in_recovery=False, active_tps=set(), active_offsets={}, active_highwaters={})
        self.tables = SimpleNamespace(recovery=self.recovery)
        self.flow_control = FakeFlowControl()
        self.assignor = FakeAssignor()
