"""Creating Orion's source topics and publishing seed stock, with aiokafka."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from .. import records
from .. import topics as t
from ..domain.catalog import DemoStock
from ..domain.commands import AdjustStock

log = logging.getLogger("orion.kafka")


class TopicMismatch(RuntimeError):
    """A topic exists with another partition count than Orion needs."""


async def _admin(bootstrap: str, timeout: float, options: Mapping[str, Any]) -> AIOKafkaAdminClient:
    deadline = asyncio.get_running_loop().time() + timeout
    delay = 0.2
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000, **options)
        try:
            await admin.start()
            return admin
        except KafkaConnectionError:
            await admin.close()
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def ensure_topics(
    bootstrap: str, partitions: int, *, timeout: float = 60, options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create every missing topic with `partitions` (or the count its spec fixes, with its
    settings); refuse existing ones that differ. `options`: how to connect (kafka_auth.client_options)."""
    admin = await _admin(bootstrap, timeout, options or {})
    try:
        existing = set(await admin.list_topics())
        # One count for the pipeline: the saga table must match `orders` and `order-events`.
        specs = {spec.name: spec for spec in t.ALL}
        wanted = {spec.name: spec.partitions or partitions for spec in t.ALL}
        missing = [
            NewTopic(name, n, 1, topic_configs=dict(specs[name].config))
            for name, n in wanted.items() if name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another worker won the race
        present = [name for name in wanted if name in existing]
        if present:
            described = await admin.describe_topics(present)
            for desc in described:
                count = len(desc["partitions"])
                if count != wanted[desc["topic"]]:
                    if specs[desc["topic"]].partitions is not None:
                        raise TopicMismatch(
                            f"topic {desc['topic']} has {count} partitions, Orion needs "
                            f"{wanted[desc['topic']]}: delete it and run `orion topics` to create it again"
                        )
                    raise TopicMismatch(
                        f"topic {desc['topic']} has {count} partitions, Orion is set up for "
                        f"{wanted[desc['topic']]}: set ORION_PARTITIONS={count} to run on these topics "
                        "(a partition count is fixed for a deployment's life; see README, Running more workers)"
                    )
        return [topic.name for topic in missing]
    finally:
        await admin.close()


async def publish_seed_stock(bootstrap: str, stock: list[DemoStock], options: Mapping[str, Any] | None = None) -> None:
    """Ask the reservation agents to stock the demo catalog; the fixed adjustment ids
    make a second seed change nothing."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **(options or {}))
    await producer.start()
    try:
        for item in stock:
            command = AdjustStock(
                sku=item.sku, adjustment_id=f"seed:{item.sku}", delta=item.on_hand, reason="seed",
                low_stock_threshold=item.low_stock_threshold,
            )
            await producer.send(t.STOCK_REQUESTS.name, records.encode(command), key=item.sku.encode(),
                                headers=[("actor", b"service:orion-seed")])
        await producer.flush()
    finally:
        await producer.stop()
