"""Re-fetches source partitions that Faust fetched but never handed to an agent.

After a rebalance (a worker died or joined), faust-streaming can advance the fetch
position of a partition while dropping the fetched records (a stale generation, or flow
suspended mid-delivery; see faust-streaming issues 166 and 629). The partition then looks
consumed but its committed offset stands still and its orders wait forever. This timer
notices a partition whose committed offset lags its fetch position without moving, and
seeks it back to the committed offset. Handlers are idempotent, so events that were in
fact still in flight and come again change nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import topics as t
from ..app import app, settings

log = logging.getLogger("orion.watchdog")

SOURCE_TOPICS = frozenset(spec.name for spec in t.ALL if spec is not t.DEAD_LETTERS)
# Longer than any legitimate wait on one event: a payment request is acknowledged in order,
# after its answer, so one may hold its partition's commit for a provider's whole budget.
STALL_AFTER = 15.0
STALL_AFTER_PAYMENTS = max(STALL_AFTER, 2 * max(settings.payment_timeout, settings.payment_void_timeout))

_progress: dict[object, tuple[tuple[int, int], float]] = {}


@app.timer(interval=2.0)
async def refetch_stalled_partitions() -> None:
    consumer: Any = app.consumer  # Faust's consumer internals are not in its type stubs
    if app.rebalancing or not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
        _progress.clear()
        return
    try:
        aio = consumer._thread._ensure_consumer()
        assignment = aio._subscription.subscription.assignment
        tps = [tp for tp in consumer.assignment() if tp.topic in SOURCE_TOPICS]
        ends = await consumer.highwaters(*tps)
    except Exception:  # not started, between generations, or the broker is away
        return
    now = time.monotonic()
    for tp in tps:
        state = assignment.state_value(tp)
        committed = consumer._committed_offset.get(tp) or 0
        position = getattr(state, "position", None) if state is not None else None
        position = committed if position is None else position
        # Behind: records exist past the committed offset, fetched or not (a partition
        # Faust stopped fetching keeps its position; one it dropped records of moves on).
        if max(position, ends.get(tp, 0)) <= committed:
            _progress.pop(tp, None)
            continue
        seen = _progress.get(tp)
        if seen is None or seen[0] != (committed, position):
            _progress[tp] = ((committed, position), now)
            continue
        if now - seen[1] >= (STALL_AFTER_PAYMENTS if tp.topic == t.PAYMENT_REQUESTS.name else STALL_AFTER):
            flow = consumer.flow_active, app.flow_control.is_active()
            log.error(
                "partition %s[%d] stands at committed %d, fetched %d, end %d for %.0fs "
                "(consumer flow %s, flow control %s): re-fetching",
                tp.topic, tp.partition, committed, position, ends.get(tp, -1), now - seen[1], *flow,
            )
            if not all(flow):
                consumer.resume_flow()
                app.flow_control.resume()
            consumer.resume_partitions([tp])
            await consumer.seek(tp, committed)
            _progress.pop(tp, None)
