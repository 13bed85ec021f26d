"""The worker's heartbeat on `worker-status` (agents/heartbeat.py): what it says, built from a
fake app, and how it is sent: never awaiting the broker, never failing the worker, a
tombstone at stop."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

from aiokafka import TopicPartition
from faust.types import TP

from orion_streams import metrics
from orion_streams import topics as t
from orion_streams.agents import heartbeat as hb
from orion_streams.agents.heartbeat import Heartbeat, HeartbeatService
from orion_streams.services.admission import Admission, Load
from orion_streams.services.console_stats import Workers

from .fakes import FakeApp, until

CHANGELOG = "orion-sagas-changelog"


def worker_app() -> FakeApp:
    app = FakeApp()
    consumer = app.consumer
    consumer.assign(TP(t.ORDERS.name, 0), committed=7, position=7, end=10)
    consumer.assign(TP(t.STOCK_REQUESTS.name, 2), committed=5, position=5, end=5)
    consumer.assign(TP(t.ORDER_EVENTS.name, 1), committed=0, position=0, end=0)
    del consumer.ends[TP(t.ORDER_EVENTS.name, 1)]  # not fetched yet: lag unknown
    consumer.assign(TP(CHANGELOG, 0), committed=0, position=0, end=99)  # an active's changelog: recovery
    standby, fresh = TP(CHANGELOG, 2), TP(CHANGELOG, 3)
    consumer.assign(standby, committed=0, position=0, end=50)
    consumer.assign(fresh, committed=0, position=0, end=8)
    app.assignor.standbys = {standby, fresh}
    app.recovery.standby_offsets = {standby: 40, fresh: None}  # last change applied
    return app


def door() -> Admission:
    admission = Admission(max_decision_delay=5.0, max_in_flight=1_000)
    admission.update(Load(in_flight=12, queue_delay=0.25, at=time.monotonic()))
    return admission


def make(app: FakeApp | None = None, projection: Any = None) -> Heartbeat:
    lags = projection if projection is not None else (lambda: {TopicPartition(t.ORDER_STATUS.name, 4): 6})
    return Heartbeat(cast(Any, app or worker_app()), "w7", door(), lags, refused=lambda: {"in_flight": 3})


def test_the_heartbeat_says_the_door_the_partitions_and_the_projection() -> None:
    beat = make().build()
    assert beat["type"] == "WorkerStatus" and beat["worker"] == "w7" and beat["at"].endswith("Z")
    assert beat["admission"] == {
        "open": True, "reason": None, "in_flight": 12, "decisions_per_second": 0.0,
        "queue_delay_seconds": 0.25, "refused": {"in_flight": 3},
    }
    assert beat["partitions"] == [
        {"topic": t.ORDER_EVENTS.name, "partition": 1, "lag": None, "role": "active"},
        {"topic": t.ORDERS.name, "partition": 0, "lag": 3, "role": "active"},
        {"topic": t.STOCK_REQUESTS.name, "partition": 2, "lag": 0, "role": "active"},
        {"topic": CHANGELOG, "partition": 2, "lag": 9, "role": "standby"},  # 41..49 not applied
        {"topic": CHANGELOG, "partition": 3, "lag": 8, "role": "standby"},  # nothing applied yet
    ]
    assert beat["projection"] == [{"topic": t.ORDER_STATUS.name, "partition": 4, "lag": 6}]


def test_the_console_reads_what_the_heartbeat_sends() -> None:
    workers = Workers()
    workers.heard("w7", json.loads(make().encode()), time.monotonic(), time.time())
    (seen,) = workers.message("now", time.monotonic())["workers"]
    assert seen["worker"] == "w7" and seen["admission"]["in_flight"] == 12 and len(seen["partitions"]) == 5


def test_a_worker_not_started_still_beats_with_what_it_has() -> None:
    app = FakeApp()
    app.consumer.broken = RuntimeError("not started")

    def no_projection() -> dict[Any, int]:
        raise RuntimeError("not started")

    beat = make(app, no_projection).build()
    assert beat["partitions"] == [] and beat["projection"] == [] and beat["admission"]["open"] is True


def test_refused_counts_are_this_workers_door_refusals_by_reason() -> None:
    before = hb.refused_counts().get("decision_delay", 0)
    metrics.ORDERS_REFUSED.labels("decision_delay").inc(2)
    assert hb.refused_counts()["decision_delay"] == before + 2


class FakeProducer:
    """Faust's producer: `send` hands back the future of the broker's acknowledgement."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []
        self.acks: list[asyncio.Future[Any]] = []
        self.error: Exception | None = None

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: Any, timestamp: Any,
                   headers: Any) -> asyncio.Future[Any]:
        if self.error is not None:
            raise self.error
        self.sent.append((topic, key, value))
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        return ack


async def test_beats_go_to_worker_status_under_the_worker_id_without_waiting_for_acks() -> None:
    producer = FakeProducer()
    service = HeartbeatService(make(), lambda: producer)
    await service.beat()
    await service.beat()
    assert [(topic, key) for topic, key, _ in producer.sent] == [(t.WORKER_STATUS.name, b"w7")] * 2
    assert json.loads(producer.sent[0][2] or b"")["worker"] == "w7"
    assert not any(ack.done() for ack in producer.acks)  # handed over, not awaited


async def test_a_failed_send_or_ack_never_raises_and_pauses_the_heartbeat() -> None:
    producer = FakeProducer()
    service = HeartbeatService(make(), lambda: producer)
    producer.error = RuntimeError("broker away")
    await service.beat()  # no exception
    assert service.quiet_until > time.monotonic() and producer.sent == []
    producer.error = None
    await service.beat()
    assert producer.sent == []  # still quiet
    service.quiet_until = 0.0
    await service.beat()
    producer.acks[-1].set_exception(RuntimeError("not acknowledged"))
    await until(lambda: service.quiet_until > time.monotonic(), "the failed ack to pause the heartbeat")

    def no_producer() -> Any:
        raise RuntimeError("runtime not started")

    service = HeartbeatService(make(), no_producer)
    await service.beat()
    await service.tombstone()


async def test_the_service_beats_every_interval_and_sends_a_tombstone_at_stop() -> None:
    producer = FakeProducer()
    service = HeartbeatService(make(), lambda: producer, interval=0.01)
    await service.start()
    try:
        await until(lambda: len(producer.sent) >= 3, "three heartbeats")
    finally:
        stopping = asyncio.ensure_future(service.stop())
        await until(lambda: producer.sent[-1][2] is None, "the tombstone")
        producer.acks[-1].set_result(None)
        await asyncio.wait_for(stopping, 5.0)
    assert producer.sent[-1] == (t.WORKER_STATUS.name, b"w7", None)
    assert all(value is not None for _, _, value in producer.sent[:-1])
    # Nothing after the tombstone: stopping ended the beating task before sending it.
    assert service._task is None
