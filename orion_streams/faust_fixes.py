"""Work-arounds for faust-streaming 0.15.3 behaviour that loses events or stalls; applied
when the app loads.

1. Offset gaps. Faust's consumer treats any jump in the offsets it reads as a "gap" and
   counts the skipped offsets as acknowledged: meant for compacted topics and transaction
   markers. Orion's source topics have neither, but after a rebalance Faust can advance a
   partition's fetch position past records it never handed to an agent (faust-streaming
   issues 166, 629); the gap rule then commits past them and the events are lost for good
   (an order stuck in PENDING, seen in tests/e2e/test_failover.py). With gaps ignored the
   commit stops at the first missing event; agents/watchdog.py notices the stalled partition
   and re-fetches from there.

2. Table recovery on compacted changelogs (faust-streaming issue 176; the fix is commit
   4271aecb on the project's branch, in no release). Recovery records, per changelog
   partition, the offset of the last change applied, and for a changelog whose head was
   cleaned it starts from `earliest - 1`; 0.15.3 then seeks to that offset itself. The
   broker answers a fetch below the log start with OffsetOutOfRange, no change ever arrives
   for the partition, and recovery waits forever ("No event received for active tp").
   Seeking to the offset after the last one applied, as the fix does, never asks for an
   offset below the log start and does not re-read the change already applied.

3. Commits past an unhandled event (faust-streaming 606; the fix, PR 707, is in no
   release). The offset to commit is one past the first run of acknowledged offsets, and
   0.15.3 checks that this run starts at the committed offset with `min(acked) - committed
   > 1`, which lets through the very case it exists for: the event at the committed offset
   itself was never handed to an agent (dropped after a rebalance) or is still in flight,
   and the next one was acknowledged. A committed offset of 0, or none yet, skips the check
   altogether. The commit then passes the event and it is lost for good (an accepted order
   PENDING that the saga never saw, in about one SIGKILL failover run in ten here). Here a
   run is committed only if it starts exactly at the next offset expected (the committed
   one, or where reading began on a partition nothing was committed for) and stops before
   any event still in flight; the watchdog re-fetches a partition whose commit stands still.

4. Fetch latency. aiokafka keeps one fetch in flight per broker, and a partition whose
   records were just handed over waits for that fetch to return before it is asked for
   again. Faust creates its consumer with `fetch_max_wait_ms=1500`, so when the other
   partitions are quiet every hop of an order could wait up to 1.5 s for the fetch in the
   air (seen as 1.5-4.6 s between a record's timestamp and its handling under load, with
   the agents idle). The worker's consumer waits at most FETCH_MAX_WAIT_MS instead.

5. Commit cost. 0.15.3 builds the consumer's whole assignment as a new set once for every
   offset it commits (`tp in self.assignment()` inside a comprehension): with 12 partitions
   of every topic and changelog a commit converts thousands of topic-partitions, 1.3 % of
   the worker's samples in the steady mix (py-spy). Here a commit takes it once.

6. Fetches that outlive a rebalance. The consumer asks aiokafka for records of its active
   partitions (those not paused) and waits up to a second for them, passing Faust's own set
   of active partitions, which Faust keeps changing meanwhile. aiokafka reads an empty set as
   "every partition". A rebalance pauses every partition while that wait is still on, so the
   wait drains whatever was fetched for all of them, and Faust drops it because the flow is
   stopped. It then re-seeks only the partitions that have committed offsets; changelog
   partitions have none. When recovery had just rewound a changelog partition it now owns
   (from standby, to read it again from the start), its records are consumed and dropped,
   its position sits at the end, and recovery waits forever ("No event received for active
   tp"; scale 3 -> 1 in tests/e2e/test_faults.py, once in about 30 runs here, and twice in CI).
   Here the wait sees the set as it is, and an empty set never takes in a changelog
   partition (source partitions are read as 0.15.3 reads them).
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import Any

from aiokafka.errors import CommitFailedError, ConsumerStoppedError
from aiokafka.structs import OffsetAndMetadata
from faust.tables.recovery import Recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, ensure_aiokafka_TP
from faust.utils.functional import consecutive_numbers

log = logging.getLogger("orion.faust")
_applied = False


async def _no_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
    log.warning(
        "offsets %d..%d of %s[%d] were skipped by the consumer; not counting them as done",
        offset_from,
        offset_to,
        tp.topic,
        tp.partition,
    )


async def _seek_after_applied(self: Any, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
    """Resume each changelog partition after the last change applied (-1: from the start)."""
    new_offsets = {}
    for tp in tps:
        offset = offsets[tp]
        new_offsets[tp] = max((-1 if offset is None else offset) + 1, 0)
    await consumer.seek_wait(new_offsets)


# Where reading began on partitions nothing was committed for: the first offset expected.
_start: dict[Any, int] = {}
_original_perform_seek = faust_consumer.Consumer.perform_seek


async def _perform_seek(self: Any) -> None:
    await _original_perform_seek(self)
    fresh = [tp for tp in self.assignment() if self._committed_offset.get(tp) is None]
    _start.clear()
    if fresh:
        read = self._read_offset
        earliest = await self.earliest_offsets(*fresh)
        for tp in fresh:
            # committed 0 is stored as None by 0.15.3; a partition never committed starts at
            # its log start (auto_offset_reset=earliest)
            _start[tp] = 0 if read.get(tp) == 0 else (earliest.get(tp) or 0)


def expected_offset(consumer: Any, tp: Any) -> int | None:
    """The next offset of `tp` to be done: the committed one, or where reading began."""
    committed = consumer._committed_offset.get(tp)
    return committed if committed is not None else _start.get(tp)


def _new_offset(self: Any, tp: Any) -> int | None:
    """One past the acknowledged run that starts at the next offset expected, stopping
    before any event still in flight; None while the next expected event is not done."""
    acked = self._acked[tp]
    if not acked:
        return None
    acked.sort()
    expected = expected_offset(self, tp)
    if expected is not None:
        stale = [o for o in acked if o < expected]  # already committed
        if stale:
            del acked[: len(stale)]
            self._acked_index[tp].difference_update(stale)
            if not acked:
                return None
        if acked[0] != expected:
            return None  # the event at `expected` is not done: never commit past it
    batch = next(consecutive_numbers(acked))
    in_flight = [m.offset for m in list(self._unacked_messages) if m.tp == tp and not m.acked]
    if in_flight:
        batch = [o for o in batch if o < min(in_flight)]
        if not batch:
            return None
    del acked[: len(batch)]
    self._acked_index[tp].difference_update(batch)
    return int(batch[-1]) + 1


# How long the broker may hold a fetch that has nothing to return (see 4 above).
# 100 ms: python -m bench.hotpath catalog 358/s against 250/s with 1500; an idle worker and
# broker spend 0.7 % and 1.6 % of a core more on the fetches than with 1500 (20 ms: 6 % more).
FETCH_MAX_WAIT_MS = 100


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    consumer = _faust_create_worker_consumer(self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
    return consumer


_faust_create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer


async def _commit(self: Any, offsets: Any) -> bool:
    """0.15.3's AIOKafkaConsumerThread._commit, with the assignment taken once (see 5)."""
    consumer = self._ensure_consumer()
    now = monotonic()
    assigned = self.assignment()
    commitable = {tp: offset for tp, offset in offsets.items() if tp in assigned}
    try:
        aiokafka_offsets = {ensure_aiokafka_TP(tp): OffsetAndMetadata(offset, "") for tp, offset in commitable.items()}
        self.tp_last_committed_at.update({tp: now for tp in commitable})
        await consumer.commit(aiokafka_offsets)
    except CommitFailedError as exc:
        if "already rebalanced" in str(exc):
            return False
        self.log.exception("Committing raised exception: %r", exc)
        await self.crash(exc)
        return False
    except Exception as exc:  # IllegalStateError and the rest, as 0.15.3 does
        self.log.exception("Got exception: %r\nCurrent assignment: %r", exc, self.assignment())
        await self.crash(exc)
        return False
    return True


class _Active:
    """Faust's set of active partitions as aiokafka's fetched_records reads it (`if
    partitions and tp not in partitions`): live, and empty meaning every partition except
    the changelogs'. 0.15.3 relies on the first for its source partitions (a partition its
    agents' queues are too full for is left out of the set and still yielded, and what a
    stopped flow drops is sought back to the committed offset); a changelog partition is
    read only while recovery or a standby has resumed it."""

    __slots__ = ("changelogs", "tps")

    def __init__(self, tps: Any, changelogs: Any) -> None:
        self.tps, self.changelogs = tps, changelogs

    def __bool__(self) -> bool:
        return True

    def __contains__(self, tp: Any) -> bool:
        return tp in self.tps or (not self.tps and tp.topic not in self.changelogs)


async def _fetch_records(
    self: Any, consumer: Any, active_partitions: Any, timeout: float | None = None, max_records: int | None = None
) -> Any:
    """0.15.3's AIOKafkaConsumerThread._fetch_records, with the set read live (see 6)."""
    if not self.consumer.flow_active:
        return {}
    fetcher = consumer._fetcher
    if consumer._closed or fetcher._closed:
        raise ConsumerStoppedError()
    partitions = None if active_partitions is None else _Active(
        active_partitions, self.consumer.app.tables.changelog_topics)
    with fetcher._subscriptions.fetch_context():
        return await fetcher.fetched_records(partitions, timeout=timeout, max_records=max_records)


def apply() -> None:
    global _applied
    if not _applied:
        AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
        AIOKafkaConsumerThread._commit = _commit  # type: ignore[method-assign]
        AIOKafkaConsumerThread._fetch_records = _fetch_records  # type: ignore[method-assign]
        faust_consumer.Consumer._add_gap = _no_gap  # type: ignore[method-assign]
        Recovery._seek_offsets = _seek_after_applied  # type: ignore[method-assign]
        faust_consumer.Consumer.perform_seek = _perform_seek  # type: ignore[method-assign]
        faust_consumer.Consumer._new_offset = _new_offset  # type: ignore[method-assign]
        _applied = True
