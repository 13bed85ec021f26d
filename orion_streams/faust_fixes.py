"""Work-arounds for faust-streaming behaviour that loses events; applied when the app loads.

Faust's consumer treats any jump in the offsets it reads as a "gap" and counts the skipped
offsets as acknowledged: meant for compacted topics and transaction markers. Orion's source
topics have neither, but after a rebalance Faust can advance a partition's fetch position
past records it never handed to an agent (faust-streaming issues 166, 629); the gap rule then
commits past them and the events are lost for good (an order stuck in PENDING, seen in
tests/e2e/test_failover.py). With gaps ignored the commit stops at the first missing event;
agents/watchdog.py notices the stalled partition and re-fetches from there.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.transport import consumer as faust_consumer

log = logging.getLogger("orion.faust")
_applied = False


async def _no_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
    log.warning(
        "offsets %d..%d of %s[%d] were skipped by the consumer; not counting them as done",
        offset_from, offset_to, tp.topic, tp.partition,
    )


def apply() -> None:
    global _applied
    if not _applied:
        faust_consumer.Consumer._add_gap = _no_gap  # type: ignore[method-assign]
        _applied = True
