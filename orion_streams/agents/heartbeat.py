"""Each worker's heartbeat on `worker-status`, once a second, for the ops console.

Every worker's live feed reads `worker-status` (adapters/live.py), so a console connected
to any worker sees every worker: its admission door, the partitions it owns (active) and
keeps a copy of (standby) with their lag, and its projection's lag. The record's key is the
worker id; the topic is compacted, and a worker that stops cleanly sends a tombstone so it
leaves the console at once (one that dies is left out 10 s after its last heartbeat).

A heartbeat is one small record a second on every worker, all the time: it is built from
what the worker already has in memory (the consumer's assignment, highwaters and committed
offsets, as `ConsumerLag` reads them; the door's snapshot; the refusal counter) and handed to
the worker's producer without waiting for the broker. A failed send is logged at debug and
the next heartbeat tried later (backing off while Kafka is away); it never stops the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import mode
import orjson

from .. import internals, metrics, records
from .. import topics as t
from ..domain.retry import Backoff

if TYPE_CHECKING:
    from ..app import Orion
    from ..services.admission import Admission
    from . import Agents

log = logging.getLogger("orion.heartbeat")

INTERVAL = 1.0
# How long handing a heartbeat to the producer may take (it waits for metadata while the
# broker is away), and the tombstone's send and acknowledgement at stop.
SEND_TIMEOUT = 1.0
STOP_TIMEOUT = 3.0
ADMISSION_FIELDS = ("open", "reason", "in_flight", "decisions_per_second", "queue_delay_seconds")
# The pipeline's topics: a worker's active partitions of them are shown with their lag.
_SOURCES = frozenset(spec.name for spec in t.PIPELINE)


def refused_counts() -> dict[str, int]:
    """Orders this worker's door refused since it started, by reason."""
    out: dict[str, int] = {}
    for family in metrics.ORDERS_REFUSED.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["reason"]] = int(sample.value)
    return out


class Heartbeat:
    """Builds this worker's `WorkerStatus`."""

    def __init__(
        self, app: Any, worker: str, door: Admission, projection_lag: Callable[[], Mapping[Any, int]],
        refused: Callable[[], dict[str, int]] = refused_counts,
    ) -> None:
        self.app, self.worker, self.door = app, worker, door
        self.projection_lag, self.refused = projection_lag, refused
        self.key = worker.encode()

    def build(self) -> dict[str, Any]:
        snapshot = self.door.snapshot(time.monotonic())
        admission = {name: snapshot.get(name) for name in ADMISSION_FIELDS}
        admission["refused"] = self.refused()
        return {
            "type": "WorkerStatus",
            "worker": self.worker,
            "at": records.utc_iso(time.time(), "milliseconds"),
            "admission": admission,
            "partitions": self.partitions(),
            "projection": self.projection(),
        }

    def encode(self) -> bytes:
        return orjson.dumps(self.build())

    def partitions(self) -> list[dict[str, Any]]:
        """The source partitions this worker owns (active) and the changelog partitions it
        keeps a standby copy of, with their lag: for an active one the records after Faust's
        committed offset, for a standby the changes recovery has not applied yet. `lag` is
        None until the consumer has fetched from the partition (no highwater yet)."""
        app = self.app
        consumer = app.consumer
        try:
            assigned = consumer.assignment()
            standbys = app.assignor.assigned_standbys()
            committed = internals.committed_offsets(consumer)
        except Exception:  # not started, or between rebalances
            return []
        try:
            applied = internals.standby_offsets(app) if standbys else {}
        except Exception:
            applied = {}
        out = []
        for tp in sorted(tp for tp in assigned if tp.topic in _SOURCES and tp not in standbys):
            end = _highwater(consumer, tp)
            lag = None if end is None else max(0, end - (committed.get(tp) or 0))
            out.append({"topic": tp.topic, "partition": tp.partition, "lag": lag, "role": "active"})
        for tp in sorted(standbys):
            end = _highwater(consumer, tp)
            last = applied.get(tp)
            lag = None if end is None else max(0, end - (last + 1 if last is not None and last >= 0 else 0))
            out.append({"topic": tp.topic, "partition": tp.partition, "lag": lag, "role": "standby"})
        return out

    def projection(self) -> list[dict[str, Any]]:
        """The partitions this worker's projection owns, with the records it has not written."""
        try:
            lags = self.projection_lag()
        except Exception:  # not started
            return []
        return [
            {"topic": tp.topic, "partition": tp.partition, "lag": lag}
            for tp, lag in sorted(lags.items(), key=lambda item: (item[0].topic, item[0].partition))
        ]


def _highwater(consumer: Any, tp: Any) -> int | None:
    try:
        end: int | None = consumer.highwater(tp)
    except Exception:
        return None
    return end


class HeartbeatService(mode.Service):
    """Sends the heartbeat every INTERVAL seconds; the tombstone when the worker stops."""

    _task: asyncio.Task[None] | None = None

    def __init__(
        self, heartbeat: Heartbeat, producer: Callable[[], Any], *, interval: float = INTERVAL,
        topic: str = t.WORKER_STATUS.name, **kwargs: Any,
    ) -> None:
        self.heartbeat, self.producer = heartbeat, producer
        self.interval, self.topic = interval, topic
        self.backoff = Backoff(INTERVAL, 30.0)
        self.quiet_until = 0.0  # monotonic: no heartbeat before this (Kafka was away)
        self.sent = 0
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="orion-heartbeat")

    async def on_stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.tombstone()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await self.beat()
            due = max(due + self.interval, loop.time())  # no catching up after a stall
            await asyncio.sleep(due - loop.time())

    async def beat(self) -> None:
        """Build and hand one heartbeat to the producer; never raises."""
        if time.monotonic() < self.quiet_until:
            return
        try:
            value = self.heartbeat.encode()
            async with asyncio.timeout(SEND_TIMEOUT):
                ack = await self.producer().send(self.topic, self.heartbeat.key, value, None, None, None)
        except Exception as exc:  # no producer yet, the broker away, a bug in building it
            self._failed(exc)
            return
        self.sent += 1
        if isinstance(ack, asyncio.Future):
            ack.add_done_callback(self._acked)

    def _acked(self, ack: asyncio.Future[Any]) -> None:
        if ack.cancelled():
            return
        exc = ack.exception()
        if exc is not None:
            self._failed(exc)
        else:
            self.backoff.reset()

    def _failed(self, exc: BaseException) -> None:
        pause = self.backoff.next()
        self.quiet_until = time.monotonic() + pause
        log.debug("heartbeat not sent (%r); next in %.1f s", exc, pause)

    async def tombstone(self) -> None:
        """Tell the consoles this worker is gone (a None value under its key)."""
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                ack = await self.producer().send(self.topic, self.heartbeat.key, None, None, None, None)
                await ack
        except Exception as exc:
            log.debug("heartbeat tombstone not sent: %r", exc)


def register(orion: Orion, agents: Agents) -> HeartbeatService:
    """This worker's heartbeat, started with the app's services (after table recovery)."""
    app = orion.app
    heartbeat = Heartbeat(app, orion.settings.worker_id, orion.runtime.admission, agents.projection.lag)
    service = HeartbeatService(heartbeat, lambda: orion.bus.producer, beacon=app.beacon)
    app.service(cast(Any, service))
    return service
