"""The faust-streaming work-arounds, on fakes (the e2e tests run them on a real broker)."""

from __future__ import annotations

from typing import Any

from faust.tables.recovery import Recovery
from faust.types import TP

from orion_streams import faust_fixes


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
