"""The reading of the load behind the door of `POST /v1/orders` (services/admission.py).

Every worker reads the same numbers from PostgreSQL twice a second (the orders in flight
and the age of the queue's head), so all of them open and close the door together; the
decision rate comes from this worker's own saga, scaled by its share of the partitions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import metrics
from .. import topics as t
from ..services.admission import Admission, Load

if TYPE_CHECKING:
    from ..app import Orion
    from ..bootstrap import Runtime

log = logging.getLogger("orion.admission")

# The queue delay is the age of this many-th oldest undecided order: a few slow or stuck
# orders do not close the door, a queue does.
QUEUE_SKIP = 10
READ_EVERY = 0.5

async def read_load(runtime: Runtime, door: Admission, share: float) -> None:
    """Take a reading of the orders in flight; a failed reading leaves the last one to age."""
    try:
        in_flight, head = await (await runtime.ready()).store.orders_in_flight(QUEUE_SKIP)
    except Exception as exc:  # the database is away: the reading goes stale and the door opens
        log.debug("could not read the orders in flight: %s", exc)
        return
    delay = max(0.0, time.time() - head.timestamp()) if head is not None else 0.0
    door.update(Load(in_flight, delay, time.monotonic(), share=share))


def share_of(app: Any, partitions: int) -> float:
    """The share of the order partitions this worker's saga decides."""
    try:
        owned = sum(1 for tp in app.assignor.assigned_actives() if tp.topic == t.ORDERS.name)
    except Exception:  # not assigned yet
        return 0.0
    return owned / partitions


class AdmissionGauges(Collector):
    """The door as Prometheus sees it, read at scrape time."""

    def __init__(self, door: Admission) -> None:
        self.door = door

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.door.snapshot(time.monotonic())
        yield GaugeMetricFamily("orion_admission_open", "1 while this worker accepts new orders", value=int(bool(state["open"])))
        in_flight = state["in_flight"]
        yield GaugeMetricFamily(
            "orion_admission_in_flight", "Accepted orders not yet decided, at the latest reading",
            value=float(in_flight) if isinstance(in_flight, int) else 0.0,
        )
        delay = state["queue_delay_seconds"]
        yield GaugeMetricFamily(
            "orion_admission_queue_delay_seconds", "How long the head of the queue has waited for its stock",
            value=float(delay) if isinstance(delay, float) else 0.0,
        )


def register(orion: Orion) -> None:
    """The door's reading, every READ_EVERY seconds, and its gauges."""
    runtime, app, door = orion.runtime, orion.app, orion.runtime.admission

    async def take_reading() -> None:
        await read_load(runtime, door, share_of(app, orion.settings.partitions))

    app.timer(interval=READ_EVERY, name="orion_streams.web.admission.read_load")(take_reading)
    metrics.register_collector(AdmissionGauges(door))
