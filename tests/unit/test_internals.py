"""Each private attribute of Faust and aiokafka that orion_streams/internals.py reads is
still where it reads it: after an upgrade, these fail before a worker does."""

from __future__ import annotations

import inspect

import aiokafka
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.subscription_state import Assignment, SubscriptionState, TopicPartitionState
from faust.tables.recovery import Recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from orion_streams import internals


def _assigns(function: object, attribute: str) -> bool:
    return f"self.{attribute} =" in inspect.getsource(function)  # type: ignore[arg-type]


def test_a_faust_consumer_delegates_to_a_thread_that_owns_the_aiokafka_consumer() -> None:
    assert _assigns(faust_consumer.ThreadDelegateConsumer.__init__, "_thread")
    assert callable(AIOKafkaConsumerThread._ensure_consumer)


def test_faust_keeps_acknowledged_and_committed_offsets_per_partition() -> None:
    assert _assigns(faust_consumer.Consumer.__init__, "_acked")
    assert _assigns(faust_consumer.Consumer.__init__, "_committed_offset")
    assert "_paused_partitions" in inspect.getsource(faust_consumer.Consumer)


def test_faust_recovery_keeps_the_last_offset_applied_per_standby_partition() -> None:
    assert _assigns(Recovery.__init__, "standby_offsets")
    assert "self.standby_offsets" in inspect.getsource(Recovery.add_standby)  # None until one is applied
    app = type("App", (), {"tables": type("Tables", (), {"recovery": type("R", (), {"standby_offsets": {"tp": 4}})()})()})()
    assert internals.standby_offsets(app) == {"tp": 4}


def test_aiokafka_keeps_fetch_positions_in_its_subscription_state() -> None:
    assert isinstance(SubscriptionState.subscription, property)
    assert callable(Assignment.state_value)
    assert isinstance(TopicPartitionState.position, property)
    assert isinstance(TopicPartitionState.has_valid_position, property)


async def test_readings_on_real_objects() -> None:
    """The readings work on the libraries' own objects, not only in their source."""
    aio = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")  # never started: no broker needed
    try:
        assert isinstance(aio._client, AIOKafkaClient) and callable(aio._client.fetch_all_metadata)
        tp = aiokafka.TopicPartition("t", 0)
        aio.assign([tp])
        assert internals.fetch_position(aio, tp) is None  # assigned, no position yet
        aio._subscription.seek(tp, 42)  # what a fetch or a commit lookup would set
        assert internals.fetch_position(aio, tp) == 42

        class Faust:
            _thread = type("Thread", (), {"_ensure_consumer": lambda self: aio})()
            _acked = {tp: [5, 6]}
            _committed_offset = {tp: 5}

        assert internals.aiokafka_consumer(Faust()) is aio
        assert internals.acked_offsets(Faust(), tp) == [5, 6]
        assert internals.committed_offsets(Faust()) == {tp: 5}
        assert internals.paused_partitions(Faust()) == set()
    finally:
        await aio.stop()

