"""`ensure_topics` (adapters/kafka_admin.py) with a fake admin client: every topic of
topics.ALL is created, the pipeline's with ORION_PARTITIONS partitions and `worker-status`
with its own single compacted partition; existing topics are checked against those counts."""

from __future__ import annotations

from typing import Any

import pytest

from orion_streams import topics as t
from orion_streams.adapters import kafka_admin
from orion_streams.adapters.kafka_admin import TopicMismatch, ensure_topics


class FakeAdmin:
    def __init__(self, existing: dict[str, int]) -> None:
        self.existing = existing
        self.created: list[Any] = []
        self.closed = False

    async def list_topics(self) -> list[str]:
        return list(self.existing)

    async def create_topics(self, topics: list[Any]) -> None:
        self.created.extend(topics)

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [{"topic": name, "partitions": [{}] * self.existing[name]} for name in names]

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> FakeAdmin:
    fake = FakeAdmin({})

    async def connect(*args: Any) -> FakeAdmin:
        return fake

    monkeypatch.setattr(kafka_admin, "_admin", connect)
    return fake


async def test_every_topic_is_created_worker_status_with_one_compacted_partition(admin: FakeAdmin) -> None:
    created = await ensure_topics("kafka:9092", 6)
    assert created == [spec.name for spec in t.ALL] and t.WORKER_STATUS.name in created
    counts = {topic.name: topic.num_partitions for topic in admin.created}
    assert counts == {**{spec.name: 6 for spec in t.PIPELINE}, t.WORKER_STATUS.name: 1}
    status = next(topic for topic in admin.created if topic.name == t.WORKER_STATUS.name)
    assert status.topic_configs["cleanup.policy"].startswith("compact")
    assert all(topic.topic_configs == {} for topic in admin.created if topic.name != t.WORKER_STATUS.name)
    assert admin.closed


async def test_existing_topics_are_checked_against_their_own_counts(admin: FakeAdmin) -> None:
    admin.existing = {**{spec.name: 6 for spec in t.PIPELINE}, t.WORKER_STATUS.name: 1}
    assert await ensure_topics("kafka:9092", 6) == [] and admin.created == []
    admin.existing[t.WORKER_STATUS.name] = 6  # made by hand with the pipeline's count
    with pytest.raises(TopicMismatch, match="worker-status has 6 partitions, Orion needs 1"):
        await ensure_topics("kafka:9092", 6)


def test_the_pipeline_is_every_topic_but_worker_status() -> None:
    assert t.WORKER_STATUS in t.ALL and t.WORKER_STATUS not in t.PIPELINE
    assert len(t.PIPELINE) == len(t.ALL) - 1 and t.DEAD_LETTERS in t.PIPELINE
