"""Every private attribute of Faust and aiokafka that Orion reads, in one place.

Faust's and aiokafka's public APIs do not say what a worker's consumer has fetched,
acknowledged or committed, yet the watchdog, the lag metric and the debug dump need it. Each
reading is a function here, and tests/unit/test_internals.py checks each assumption against
the installed versions, so an upgrade of either library is checked in one place. What Orion
changes in Faust (patches, the consumer on the worker's loop) is in faust_fixes.py and
inline_consumer.py, which read the same attributes.
"""

from __future__ import annotations

from typing import Any


def aiokafka_consumer(consumer: Any) -> Any:
    """The aiokafka consumer under a Faust worker's consumer (faust 0.15: the consumer
    delegates to a consumer "thread" that owns it; ours runs on the worker's loop)."""
    return consumer._thread._ensure_consumer()


def fetch_position(aio: Any, tp: Any) -> int | None:
    """The offset aiokafka will fetch next for `tp`; None before it has one (awaiting a
    reset or a committed offset: its `position` then fails an assertion, it is not None)."""
    state = aio._subscription.subscription.assignment.state_value(tp)
    return state.position if state is not None and state.has_valid_position else None


def acked_offsets(consumer: Any, tp: Any) -> list[int] | None:
    """Offsets of `tp` that the agents acknowledged and Faust has not committed yet."""
    acked: list[int] | None = consumer._acked.get(tp)
    return acked


def committed_offsets(consumer: Any) -> dict[Any, int]:
    """What Faust last committed per partition (the next offset to read)."""
    committed: dict[Any, int] = consumer._committed_offset
    return committed


def paused_partitions(consumer: Any) -> set[Any]:
    """Partitions Faust paused (flow control, recovery)."""
    return set(getattr(consumer, "_paused_partitions", set()))


async def cluster_metadata(aio: Any) -> Any:
    """The whole cluster's metadata (aiokafka's public topics() gives names only): a
    consumer without a subscription learns about partitions only when it asks."""
    return await aio._client.fetch_all_metadata()


def recovery_reading(app: Any) -> dict[Any, tuple[int, int]]:
    """Each active changelog partition table recovery is reading: the offset of the last change
    it applied (-1: none yet) and of the last change there is. Empty when no recovery runs."""
    recovery = app.tables.recovery
    if not recovery.in_recovery:
        return {}
    applied, last = recovery.active_offsets, recovery.active_highwaters
    return {
        tp: (-1 if applied.get(tp) is None else applied[tp], last[tp])
        for tp in recovery.active_tps
        if last.get(tp) is not None
    }


def standby_offsets(app: Any) -> dict[Any, int | None]:
    """The offset of the last change table recovery applied per standby changelog partition
    (None: none yet); Faust keeps reading standbys after recovery and updates these."""
    offsets: dict[Any, int | None] = app.tables.recovery.standby_offsets
    return offsets
