"""The ops console's aggregators (services/console_stats.py): `console.stats` per interval
and `console.workers` from the workers' heartbeats. Pure: times are given, not read."""

from __future__ import annotations

import random
from typing import Any

import pytest

from orion_streams.services.console_stats import (
    MAX_SAMPLES,
    BadHeartbeat,
    ConsoleStats,
    Workers,
    percentile,
)

CREATED = "2026-12-04T12:00:00.000Z"


def at_ms(ms: int) -> str:
    """CREATED plus `ms` milliseconds, as Orion writes times."""
    seconds, millis = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    return f"2026-12-04T12:{minutes:02d}:{seconds:02d}.{millis:03d}Z"


def test_an_interval_counts_accepted_orders_and_first_settled_statuses_only() -> None:
    stats = ConsoleStats()
    stats.observe("PENDING", None, CREATED, CREATED)
    stats.observe("PENDING", None, CREATED, CREATED)
    stats.observe("RESERVED", "PENDING", CREATED, at_ms(50))  # not settled
    stats.observe("CONFIRMED", "RESERVED", CREATED, at_ms(100))
    stats.observe("REJECTED", "PENDING", CREATED, at_ms(200))
    stats.observe("PAYMENT_FAILED", "RESERVED", CREATED, at_ms(300))
    stats.observe("CANCELLED", "PENDING", CREATED, at_ms(400))
    stats.observe("CANCELLED", "CONFIRMED", CREATED, at_ms(5_000))  # settled before: not again
    stats.observe("FULFILLED", "CONFIRMED", CREATED, at_ms(9_000))
    message = stats.roll("2026-12-04T12:00:01.000Z", 1.0)
    assert message == {
        "type": "console.stats", "at": "2026-12-04T12:00:01.000Z", "interval_s": 1.0, "accepted": 2,
        "outcomes": {"CONFIRMED": 1, "REJECTED": 1, "PAYMENT_FAILED": 1, "CANCELLED": 1},
        "latency_ms": {"count": 4, "p50": 200.0, "p95": 400.0, "max": 400.0},
    }


def test_the_next_interval_starts_from_nothing() -> None:
    stats = ConsoleStats()
    stats.observe("PENDING", None, CREATED, CREATED)
    stats.observe("CONFIRMED", "RESERVED", CREATED, at_ms(120))
    first = stats.roll("t1", 1.0)
    assert first["accepted"] == 1 and first["latency_ms"]["count"] == 1
    empty = stats.roll("t2", 1.0)
    assert empty["accepted"] == 0
    assert empty["outcomes"] == {"CONFIRMED": 0, "REJECTED": 0, "PAYMENT_FAILED": 0, "CANCELLED": 0}
    assert empty["latency_ms"] == {"count": 0, "p50": None, "p95": None, "max": None}
    stats.observe("REJECTED", "PENDING", CREATED, at_ms(30))
    stats.clear()
    assert stats.roll("t3", 1.0)["outcomes"]["REJECTED"] == 0


def test_latency_percentiles_are_nearest_rank() -> None:
    stats = ConsoleStats()
    for ms in range(100, 0, -1):  # 100 outcomes, 1..100 ms, in any order
        stats.observe("CONFIRMED", "RESERVED", CREATED, at_ms(ms))
    latency = stats.roll("t", 1.0)["latency_ms"]
    assert latency == {"count": 100, "p50": 50.0, "p95": 95.0, "max": 100.0}
    assert percentile([7.0], 0.95) == 7.0 and percentile([1.0, 2.0], 0.5) == 1.0


def test_a_time_it_cannot_read_counts_the_outcome_but_not_its_latency() -> None:
    stats = ConsoleStats()
    stats.observe("CONFIRMED", "RESERVED", "yesterday", at_ms(10))
    stats.observe("REJECTED", "PENDING", None, at_ms(10))
    stats.observe("CANCELLED", "PENDING", at_ms(500), CREATED)  # clocks apart: not negative
    message = stats.roll("t", 1.0)
    assert message["outcomes"] == {"CONFIRMED": 1, "REJECTED": 1, "PAYMENT_FAILED": 0, "CANCELLED": 1}
    assert message["latency_ms"] == {"count": 1, "p50": 0.0, "p95": 0.0, "max": 0.0}


def test_memory_stays_bounded_however_many_orders_settle() -> None:
    stats = ConsoleStats(max_samples=50, rng=random.Random(7))
    for ms in range(10_000):
        stats.observe("CONFIRMED", "RESERVED", CREATED, at_ms(ms))
    assert len(stats.samples) == 50
    latency = stats.roll("t", 1.0)["latency_ms"]
    # count and max are exact; the percentiles are estimates from a uniform sample.
    assert latency["count"] == 10_000 and latency["max"] == 9_999.0
    assert 3_500 < latency["p50"] < 6_500 and latency["p95"] > 8_000
    assert stats.samples == [] and ConsoleStats().max_samples == MAX_SAMPLES
    with pytest.raises(ValueError):
        ConsoleStats(max_samples=0)


def beat(name: str, **changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "type": "WorkerStatus", "worker": name, "at": CREATED,
        "admission": {"open": True, "reason": None, "in_flight": 3, "decisions_per_second": 10.0,
                      "queue_delay_seconds": 0.1, "refused": {}},
        "partitions": [{"topic": "orders", "partition": 0, "lag": 0, "role": "active"}],
        "projection": [{"topic": "order-status", "partition": 0, "lag": 2}],
    }
    value.update(changes)
    return value


def test_workers_lists_each_workers_latest_heartbeat_with_its_age() -> None:
    workers = Workers()
    workers.heard("w2", beat("w2"), monotonic=100.0, epoch=1_000.0)
    workers.heard("w1", beat("w1", partitions=[]), monotonic=101.0, epoch=1_001.0)
    workers.heard("w1", beat("w1"), monotonic=102.0, epoch=1_002.5)
    message = workers.message("now", monotonic=102.3)
    assert message["type"] == "console.workers" and message["at"] == "now"
    assert [(w["worker"], w["age_s"], w["seen_at"]) for w in message["workers"]] == [
        ("w1", 0.3, "1970-01-01T00:16:42.500Z"), ("w2", 2.3, "1970-01-01T00:16:40.000Z"),
    ]
    assert message["workers"][0]["partitions"] == beat("w1")["partitions"]
    assert message["workers"][0]["admission"]["in_flight"] == 3
    assert message["workers"][0]["projection"] == [{"topic": "order-status", "partition": 0, "lag": 2}]


def test_a_worker_not_heard_from_for_ten_seconds_is_left_out() -> None:
    workers = Workers()
    workers.heard("w1", beat("w1"), monotonic=100.0, epoch=1_000.0)
    workers.heard("w2", beat("w2"), monotonic=105.0, epoch=1_005.0)
    assert [w["worker"] for w in workers.message("t", monotonic=110.0)["workers"]] == ["w1", "w2"]
    assert [w["worker"] for w in workers.message("t", monotonic=110.5)["workers"]] == ["w2"]
    assert len(workers) == 1  # forgotten, not only hidden
    assert workers.message("t", monotonic=116.0)["workers"] == []


def test_a_tombstone_removes_the_worker_at_once() -> None:
    workers = Workers()
    workers.heard("w1", beat("w1"), monotonic=100.0, epoch=1_000.0)
    workers.heard("w2", beat("w2"), monotonic=100.0, epoch=1_000.0)
    workers.heard("w1", None, monotonic=100.5, epoch=1_000.5)
    assert [w["worker"] for w in workers.message("t", monotonic=101.0)["workers"]] == ["w2"]
    workers.heard("w9", None, monotonic=101.0, epoch=1_001.0)  # unknown: nothing to do


@pytest.mark.parametrize("value", [
    {"type": "OrderStatusChanged"}, [1, 2], "w1", beat("w1", worker=""), beat("w1", worker=7),
    beat("w1", partitions={"orders": 0}), beat("w1", admission=None), beat("w3"),
])
def test_anything_but_a_heartbeat_is_refused_and_changes_nothing(value: Any) -> None:
    workers = Workers()
    workers.heard("w1", beat("w1"), monotonic=100.0, epoch=1_000.0)
    with pytest.raises(BadHeartbeat):
        workers.heard("w1", value, monotonic=101.0, epoch=1_001.0)
    (only,) = workers.message("t", monotonic=101.0)["workers"]
    assert only["worker"] == "w1" and only["age_s"] == 1.0


def test_the_workers_remembered_are_bounded() -> None:
    workers = Workers(max_workers=3)
    for i in range(10):
        workers.heard(f"w{i}", beat(f"w{i}"), monotonic=100.0 + i / 100, epoch=1_000.0)
    assert [w["worker"] for w in workers.message("t", monotonic=100.5)["workers"]] == ["w7", "w8", "w9"]
