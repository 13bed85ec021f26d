"""The faust-streaming work-arounds, on fakes (the e2e tests run them on a real broker)."""

from __future__ import annotations

from typing import Any

from faust.tables.recovery import Recovery
from faust.types import TP

from orion_streams import faust_fixes

from .fakes import until


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[dict[Any, int]] = []

    async def seek_wait(self, offsets: dict[Any, int]) -> None:
        self.seeks.append(dict(offsets))


async def test_recovery_resumes_after_the_last_change_applied_never_below_the_log_start() -> None:
    faust_fixes.apply()
    empty, applied, compacted = TP("t-changelog", 0), TP("t-changelog", 1), TP("t-changelog", 2)
    consumer = FakeConsumer()
    # -1: nothing applied yet; 41: changes up to 41 applied; 99: a changelog whose log starts
    # at 100 (cleaned), which recovery records as `earliest - 1`.
    offsets = {empty: -1, applied: 41, compacted: 99}
    await Recovery._seek_offsets(object(), consumer, set(offsets), offsets, "active")  # type: ignore[arg-type]
    assert consumer.seeks == [{empty: 0, applied: 42, compacted: 100}]


def test_the_fixes_are_applied_once_an_app_is_built(tmp_path: Any) -> None:
    from faust.transport import consumer as faust_consumer

    from orion_streams.app import create_app
    from orion_streams.config import Settings

    create_app(Settings(state_dir=tmp_path), routes=False)

    assert Recovery._seek_offsets is faust_fixes._seek_after_applied
    assert faust_consumer.Consumer._add_gap is faust_fixes._no_gap
    assert faust_consumer.Consumer._new_offset is faust_fixes._new_offset
    assert faust_consumer.Consumer.perform_seek is faust_fixes._perform_seek
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert AIOKafkaConsumerThread._commit is faust_fixes._commit
    assert AIOKafkaConsumerThread._fetch_records is faust_fixes._fetch_records


async def test_the_workers_consumer_waits_at_most_a_tenth_of_a_second_for_a_fetch(tmp_path: Any) -> None:
    """Faust builds its consumer with fetch_max_wait_ms=1500; the worker's waits 100 ms."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from orion_streams.app import create_app
    from orion_streams.config import Settings

    app = create_app(Settings(state_dir=tmp_path), routes=False).app

    faust_fixes.apply()
    thread = AIOKafkaConsumerThread(app.consumer, loop=None)
    consumer = thread._create_worker_consumer(app.transport)
    assert consumer._fetch_max_wait_ms == faust_fixes.FETCH_MAX_WAIT_MS == 100


async def test_a_commit_takes_the_assignment_once_and_commits_only_assigned_partitions() -> None:
    from aiokafka.structs import OffsetAndMetadata, TopicPartition

    assigned = {TP("orders", 0), TP("orders", 1)}

    class Consumer:
        committed: dict[Any, Any] = {}

        async def commit(self, offsets: dict[Any, Any]) -> None:
            self.committed = offsets

    class Thread:
        calls = 0
        tp_last_committed_at: dict[Any, float] = {}
        consumer = Consumer()

        def _ensure_consumer(self) -> Consumer:
            return self.consumer

        def assignment(self) -> set[Any]:
            self.calls += 1
            return set(assigned)

    thread = Thread()
    offsets = {TP("orders", 0): 5, TP("orders", 1): 7, TP("orders", 2): 9}  # 2 moved away
    assert await faust_fixes._commit(thread, offsets) is True
    assert thread.calls == 1
    assert thread.consumer.committed == {
        TopicPartition("orders", 0): OffsetAndMetadata(5, ""), TopicPartition("orders", 1): OffsetAndMetadata(7, ""),
    }
    assert set(thread.tp_last_committed_at) == assigned


def test_health_fails_once_recovery_has_stalled_past_the_limit() -> None:
    from orion_streams.agents.watchdog import Watchdog
    from orion_streams.config import Settings

    settings = Settings()
    watchdog = Watchdog(None, settings)  # type: ignore[arg-type]  # the app is not read here
    assert watchdog.recovery_stalled_for(1e9) is None
    watchdog._recovering_since = 1000.0
    assert watchdog.recovery_stalled_for(1000.0 + settings.recovery_stall - 1) is None
    assert watchdog.recovery_stalled_for(1000.0 + settings.recovery_stall + 5) == settings.recovery_stall + 5


class FakeMessage:
    def __init__(self, tp: TP, offset: int, acked: bool = False) -> None:
        self.tp, self.offset, self.acked = tp, offset, acked


class Offsets:
    """The consumer state `_new_offset` reads, as 0.15.3 keeps it."""

    def __init__(
        self, committed: int | None, acked: list[int], in_flight: tuple[int, ...] = ()
    ) -> None:
        from collections import defaultdict

        self.tp = TP("orders", 3)
        self._acked: dict[TP, list[int]] = defaultdict(list, {self.tp: list(acked)})
        self._acked_index: dict[TP, set[int]] = defaultdict(set, {self.tp: set(acked)})
        self._committed_offset: dict[TP, int | None] = defaultdict(
            lambda: None, {self.tp: committed}
        )
        self._unacked_messages = {FakeMessage(self.tp, o) for o in in_flight}

    def new_offset(self) -> int | None:
        return faust_fixes._new_offset(self, self.tp)


def test_a_commit_never_passes_the_next_expected_event() -> None:
    # 31 is committed (the next to handle); 32 and 33 were acknowledged but 31 never was
    # (dropped after a rebalance): 0.15.3 commits 34 and 31 is lost; here nothing moves.
    stuck = Offsets(31, [32, 33])
    assert stuck.new_offset() is None and stuck._acked[stuck.tp] == [32, 33]
    # once 31 is done (re-fetched by the watchdog), the whole run goes
    stuck._acked[stuck.tp].append(31)
    assert stuck.new_offset() == 34
    assert Offsets(31, [31, 32, 33, 35]).new_offset() == 34


def test_a_commit_stops_before_an_event_still_in_flight() -> None:
    assert Offsets(10, [10, 11, 13], in_flight=(12,)).new_offset() == 12
    assert Offsets(10, [10, 12], in_flight=(11,)).new_offset() == 11
    assert Offsets(10, [11], in_flight=(10,)).new_offset() is None


def test_a_partition_never_committed_starts_where_reading_began() -> None:
    fresh = Offsets(None, [1, 2])
    faust_fixes._start[fresh.tp] = 0
    try:
        assert fresh.new_offset() is None  # offset 0 not done yet
        fresh._acked[fresh.tp].insert(0, 0)
        assert fresh.new_offset() == 3
        faust_fixes._start[fresh.tp] = 500  # a log whose head was deleted by retention
        assert Offsets(None, [500, 501]).new_offset() == 502
    finally:
        faust_fixes._start.clear()
    assert Offsets(None, [7, 8]).new_offset() == 9  # nothing known: as 0.15.3
    assert Offsets(5, [3, 4, 5]).new_offset() == 6  # acks below the commit are dropped


# -- a fetch that outlives a rebalance (6) ------------------------------------------------------


class _Records:
    """aiokafka's PartitionRecords: records from an offset on."""

    def __init__(self, first: int, count: int) -> None:
        self.offsets = iter(range(first, first + count))
        self.next_fetch_offset = first

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> int:
        offset = next(self.offsets)
        self.next_fetch_offset = offset + 1
        return offset


class _Fetcher:
    """aiokafka's Fetcher as its own fetched_records reads it (that method is the real one):
    records fetched per partition, fetch positions, and the waiters it wakes on new records."""

    def __init__(self, positions: dict[Any, int]) -> None:
        import asyncio
        from contextlib import nullcontext
        from types import SimpleNamespace

        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._records: dict[Any, Any] = {}
        self._fetch_waiters: set[Any] = set()
        self._wait_consume_future = None
        self.states = {tp: SimpleNamespace(paused=False, position=at) for tp, at in positions.items()}
        self.assignment = SimpleNamespace(active=True, state_value=self.states.__getitem__)
        for state in self.states.values():
            state.consumed_to = lambda position, state=state: setattr(state, "position", position)
        self._subscriptions = SimpleNamespace(
            reassignment_in_progress=False, is_assigned=lambda tp: True, fetch_context=nullcontext)

    def fetched(self, tp: Any, count: int) -> None:
        """A fetch response arrived for `tp`: `count` records from its position."""
        from aiokafka.consumer.fetcher import FetchResult

        self._records[tp] = FetchResult(
            tp, assignment=self.assignment, partition_records=_Records(self.states[tp].position, count), backoff=0)
        for waiter in list(self._fetch_waiters):
            waiter.set_result(None)

    from aiokafka.consumer.fetcher import Fetcher

    fetched_records = Fetcher.fetched_records
    _notify = Fetcher._notify
    _create_fetch_waiter = Fetcher._create_fetch_waiter


def _thread(fetcher: _Fetcher) -> tuple[Any, Any]:
    from types import SimpleNamespace

    aio = SimpleNamespace(_fetcher=fetcher, _closed=False)
    app = SimpleNamespace(tables=SimpleNamespace(changelog_topics={"t-changelog"}))
    return SimpleNamespace(consumer=SimpleNamespace(flow_active=True, app=app)), aio


async def test_aiokafka_reads_an_empty_set_of_partitions_as_every_partition() -> None:
    """The assumption behind 6: what 0.15.3 passes, once a rebalance has paused every
    partition, drains them all."""
    changelog = TP("t-changelog", 0)
    fetcher = _Fetcher({changelog: 0})
    fetcher.fetched(changelog, 64)
    drained = await fetcher.fetched_records(set(), timeout=0)
    assert len(drained[changelog]) == 64 and fetcher.states[changelog].position == 64


async def test_a_fetch_waiting_through_a_rebalance_drains_no_changelog_partition_the_rebalance_paused() -> None:
    import asyncio

    orders, changelog = TP("orders", 0), TP("t-changelog", 0)
    fetcher = _Fetcher({orders: 10, changelog: 0})
    thread, aio = _thread(fetcher)
    active = {orders}  # Faust's own set, changed while the fetch waits
    waiting = asyncio.ensure_future(faust_fixes._fetch_records(thread, aio, active, timeout=0.5))
    await until(lambda: bool(fetcher._fetch_waiters), "the fetch to wait for records")
    active.clear()  # the rebalance pauses every partition
    fetcher.fetched(changelog, 64)  # recovery rewound the changelog; its records arrive
    assert await waiting == {}
    assert fetcher.states[changelog].position == 0  # still there for recovery to read
    # Source partitions are read as 0.15.3 reads them: an empty set takes them in (what a
    # stopped flow then drops is sought back to the committed offset).
    fetcher.fetched(orders, 2)
    assert await faust_fixes._fetch_records(thread, aio, active, timeout=0) == {orders: [10, 11]}
    assert fetcher.states[changelog].position == 0
    active.add(changelog)  # recovery resumes it
    drained = await faust_fixes._fetch_records(thread, aio, active, timeout=0)
    assert [r for r in drained[changelog]] == list(range(64))


async def test_a_fetch_returns_only_the_active_partitions_records() -> None:
    orders, changelog = TP("orders", 0), TP("t-changelog", 0)
    fetcher = _Fetcher({orders: 10, changelog: 0})
    thread, aio = _thread(fetcher)
    fetcher.fetched(orders, 2)
    fetcher.fetched(changelog, 3)
    drained = await faust_fixes._fetch_records(thread, aio, {orders}, timeout=0)
    assert drained == {orders: [10, 11]} and fetcher.states[changelog].position == 0
    thread.consumer.flow_active = False
    assert await faust_fixes._fetch_records(thread, aio, {changelog}, timeout=0) == {}  # flow stopped: nothing
