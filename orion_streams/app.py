"""The composition root: `create_app` builds a worker (the Faust app, its tables, the
shared resources, the agents and the HTTP API) from a `Settings` object. Nothing is built
at import; every agent and view module has a `register` that takes what it needs from the
`Orion` it is given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust
from faust.sensors.monitor import Monitor

from . import faust_fixes, inline_consumer, logs
from .adapters import kafka_auth
from .agents.common import Assignment, Bus
from .bootstrap import Runtime
from .config import Settings
from .partitioner import Murmur2Partitioner
from .tables import Tables, create_tables
from .web.middleware import correlation_and_problems


class LeanMonitor(Monitor):
    """Faust's monitor without its per-event bookkeeping (timings and counters kept for
    Faust's own web stats, which Orion does not serve): 7 % of the CPU of an event in a bare
    agent here. Orion's metrics are its own (metrics.py); rebalances and commits are still
    recorded."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_table_get(self, table: Any, key: Any) -> None:
        return None

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        return None

    def on_table_del(self, table: Any, key: Any) -> None:
        return None

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> Any:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        return None


def faust_app(settings: Settings) -> faust.App:
    """The Faust app of a worker, configured from `settings` (nothing registered yet)."""
    return faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=kafka_auth.faust_credentials(settings),
        store="memory://",
        monitor=LeanMonitor(),
        datadir=str(settings.state_dir / "workers" / settings.worker_id),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        processing_guarantee=settings.processing_guarantee,
        producer_acks=-1,
        # Sends of one batch share produce requests: fewer, larger requests cost the broker and
        # the worker less CPU per record (python -m bench.hotpath: 5 ms beat 1 ms).
        producer_linger_ms=5,
        producer_partitioner=Murmur2Partitioner(),
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=settings.standby_replicas,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        # How fast a dead worker's partitions move to the living: Kafka notices after this.
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=settings.session_timeout / 10,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=4096,
        autodiscover=False,
        logging_config=logs.dict_config(settings.log_format, settings.log_level, settings.worker_id),
        # Requests larger than this are refused with 413 before a handler runs.
        web_application_options={"middlewares": [correlation_and_problems], "client_max_size": 256 * 1024},
    )


@dataclass(frozen=True)
class Orion:
    """A worker, as `create_app` built it: what agents and views are given."""

    settings: Settings
    app: faust.App
    runtime: Runtime
    tables: Tables
    bus: Bus
    assignment: Assignment

    def source(self, *names: str) -> faust.TopicT:
        """A topic an agent consumes, read as raw bytes (records.py decodes them)."""
        return self.app.topic(
            *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
            partitions=self.settings.partitions,
        )


def create_app(settings: Settings, *, routes: bool = True) -> Orion:
    """Build a worker from `settings`: the Faust app, its tables, the shared resources, the
    agents and (unless `routes` is false) the HTTP API and the live feed."""
    faust_fixes.apply()
    if not settings.consumer_thread:
        inline_consumer.apply()
    logs.per_order.rate = settings.log_order_lines
    app = faust_app(settings)
    orion = Orion(
        settings=settings, app=app, runtime=Runtime(settings), tables=create_tables(app, settings.partitions),
        bus=Bus(lambda: app.producer, settings.partitions), assignment=Assignment(app),
    )
    from . import agents

    registered = agents.register(orion)
    if routes:
        from . import web

        web.register(orion, registered)
    return orion
