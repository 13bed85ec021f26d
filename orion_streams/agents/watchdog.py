"""Re-fetches partitions that Faust fetched but never handed on.

After a rebalance (a worker died or joined), faust-streaming can advance the fetch
position of a partition while dropping the fetched records (a stale generation, or flow
suspended mid-delivery; see faust-streaming issues 166 and 629). A source partition then
looks consumed but its committed offset stands still and its orders wait forever. This timer
notices a partition whose committed offset lags its fetch position without moving, and
seeks it back to the committed offset. Handlers are idempotent, so events that were in
fact still in flight and come again change nothing.

Table recovery can lose records the same way: a changelog partition that a worker read as a
standby and now owns is read again from its start, and when those records are dropped on
their way to the recovery, it waits for them forever ("No event received for active tp")
and the worker never serves again. While recovery reads, the timer fetches again, from the
change after the last one applied, each active changelog partition that has changes left
and applied none for RECOVERY_REFETCH_AFTER; recovery skips what it has already applied.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .. import faust_fixes, internals
from .. import topics as t

if TYPE_CHECKING:
    import faust

    from ..app import Orion
    from ..config import Settings

log = logging.getLogger("orion.watchdog")

SOURCE_TOPICS = frozenset(spec.name for spec in t.PIPELINE if spec is not t.DEAD_LETTERS)
# Longer than any legitimate wait on one event: a payment request is acknowledged in order,
# after its answer, so one may hold its partition's commit for a provider's whole budget.
STALL_AFTER = 15.0
# A partition whose later events are done while the one at its committed offset is neither
# done nor in hand lost that one: Faust's stream skips an event fetched in an earlier
# generation (streams.py, "Skipping message ... generation_id"). The commit stands still at
# it (faust_fixes), and it is fetched again as soon as the gap is seen twice.
HEAD_GAP_AFTER = 1.5
# Recovery applies thousands of changes a second here; one that has applied none of a
# partition's remaining changes for this long while the consumer flows has lost them.
RECOVERY_REFETCH_AFTER = 5.0

def _skipped_head(consumer: Any, tp: Any) -> bool:
    """Later events of `tp` are acknowledged and the one at its next expected offset is not:
    it was dropped on its way to an agent (every agent acknowledges in offset order, so a
    later event is never done before an earlier one that is still being handled)."""
    acked = internals.acked_offsets(consumer, tp)
    expected = faust_fixes.expected_offset(consumer, tp)
    return acked is not None and len(acked) > 0 and expected is not None and min(acked) > expected


class Watchdog:
    """The re-fetching timer's memory: each partition's last progress and re-fetch, and
    since when table recovery has been unfinished (for the liveness check)."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self._progress: dict[object, tuple[tuple[int, int], float]] = {}
        self._refetched: dict[object, float] = {}  # when each partition was last fetched again
        self._recovery: dict[object, tuple[int, float]] = {}  # last change applied, since when
        self._recovering_since: float | None = None
        # A payment request may hold its partition's commit for a provider's whole budget.
        self.stall_after_payments = max(STALL_AFTER, 2 * max(settings.payment_timeout, settings.payment_void_timeout))

    def recovery_stalled_for(self, now: float) -> float | None:
        """Seconds a rebalance's table recovery has been unfinished, if longer than
        ORION_RECOVERY_STALL; None while the worker is making progress."""
        if self._recovering_since is None:
            return None
        waited = now - self._recovering_since
        return waited if waited > self.settings.recovery_stall else None

    async def tick(self) -> None:
        """Once a second: re-fetch each source partition that stands still behind its fetch
        position (see the module's docstring)."""
        app: Any = self.app
        consumer: Any = app.consumer  # Faust's consumer internals are not in its type stubs
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            self._progress.clear()
            if self._recovering_since is None:
                self._recovering_since = time.monotonic()
            await self._refetch_stalled_recovery(app, consumer)
            return
        self._recovering_since = None
        self._recovery.clear()
        try:
            aio = internals.aiokafka_consumer(consumer)
            tps = [tp for tp in consumer.assignment() if tp.topic in SOURCE_TOPICS]
            ends = await consumer.highwaters(*tps)
        except Exception:  # not started, between generations, or the broker is away
            return
        found = {tp: internals.fetch_position(aio, tp) for tp in tps}
        positions = {tp: position for tp, position in found.items() if position is not None}
        if len(positions) < len(found):
            # The consumer is still positioning a partition after an assignment (looking up its
            # committed offset, or resetting it): judge nothing until it has; a seek now would
            # restart every fetch in the middle of the takeover.
            return
        now = time.monotonic()
        for tp in tps:
            committed = internals.committed_offsets(consumer).get(tp) or 0
            position = positions[tp]
            # Behind: records exist past the committed offset, fetched or not (a partition
            # Faust stopped fetching keeps its position; one it dropped records of moves on).
            if max(position, ends.get(tp, 0)) <= committed:
                self._progress.pop(tp, None)
                continue
            seen = self._progress.get(tp)
            if seen is None or seen[0] != (committed, position):
                self._progress[tp] = ((committed, position), now)
                continue
            # Fetched again lately: give that fetch time to arrive (each seek restarts the
            # consumer's fetches, so seeking on every tick would starve every partition).
            skipped = _skipped_head(consumer, tp) and now - self._refetched.get(tp, -STALL_AFTER) >= STALL_AFTER
            limit = HEAD_GAP_AFTER if skipped else (
                self.stall_after_payments if tp.topic == t.PAYMENT_REQUESTS.name else STALL_AFTER)
            if now - seen[1] >= limit:
                flow = consumer.flow_active, app.flow_control.is_active()
                log.log(
                    logging.WARNING if skipped else logging.ERROR,
                    "partition %s[%d] stands at committed %d, fetched %d, end %d for %.0fs "
                    "(%s; consumer flow %s, flow control %s): re-fetching",
                    tp.topic, tp.partition, committed, position, ends.get(tp, -1), now - seen[1],
                    "the event at the committed offset was dropped, later ones are done" if skipped else "no progress",
                    *flow,
                )
                if not all(flow):
                    consumer.resume_flow()
                    app.flow_control.resume()
                consumer.resume_partitions([tp])
                await consumer.seek(tp, committed)
                self._progress.pop(tp, None)
                self._refetched[tp] = now

    async def _refetch_stalled_recovery(self, app: Any, consumer: Any) -> None:
        """Fetch again each active changelog partition whose recovery stands still (see the
        module's docstring)."""
        reading = internals.recovery_reading(app)
        paused = internals.paused_partitions(consumer)
        # Recovery reads a partition once it has resumed it and the flow (before that it is
        # still looking up where to start).
        reading = {tp: at for tp, at in reading.items() if tp not in paused} if consumer.flow_active else {}
        now = time.monotonic()
        for tp in [tp for tp in self._recovery if tp not in reading]:
            del self._recovery[tp]
        for tp, (applied, last) in reading.items():
            seen = self._recovery.get(tp)
            if applied >= last or seen is None or seen[0] != applied:
                self._recovery[tp] = (applied, now)
                continue
            if now - seen[1] >= RECOVERY_REFETCH_AFTER:
                log.warning(
                    "table recovery of %s[%d] applied nothing for %.0fs with changes %d..%d left: "
                    "fetching them again",
                    tp.topic, tp.partition, now - seen[1], applied + 1, last,
                )
                self._recovery[tp] = (applied, now)
                try:
                    await consumer.seek_wait({tp: applied + 1})
                except Exception as exc:  # reassigned meanwhile, or the broker is away: next tick
                    log.warning("could not fetch %s[%d] again: %r", tp.topic, tp.partition, exc)


def register(orion: Orion) -> Watchdog:
    """The watchdog's timer, once a second."""
    watchdog = Watchdog(orion.app, orion.settings)
    orion.app.timer(interval=1.0, name="orion_streams.agents.watchdog.refetch_stalled_partitions")(watchdog.tick)
    return watchdog
