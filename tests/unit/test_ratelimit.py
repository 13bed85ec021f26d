"""Token buckets: bursts, refill, Retry-After and a bounded table of callers."""

from __future__ import annotations

import pytest

from orion_streams.web.ratelimit import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_allowed_then_each_caller_waits_for_the_refill() -> None:
    clock = Clock()
    limits = TokenBuckets(2.0, 3, clock=clock)
    assert [limits.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limits.take("a") == pytest.approx(0.5)
    assert limits.take("b") == 0.0  # callers do not share a bucket
    clock.now += 0.5
    assert limits.take("a") == 0.0
    assert limits.take("a") > 0
    clock.now += 60
    assert [limits.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # refills only up to the burst
    assert limits.take("a") > 0


def test_a_refused_request_does_not_push_the_wait_further() -> None:
    clock = Clock()
    limits = TokenBuckets(1.0, 1, clock=clock)
    assert limits.take("a") == 0.0
    assert limits.take("a") == pytest.approx(1.0)
    assert limits.take("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert limits.take("a") == 0.0


def test_the_table_of_callers_is_bounded_least_recent_first() -> None:
    clock = Clock()
    limits = TokenBuckets(1.0, 1, max_keys=3, clock=clock)
    for key in ("a", "b", "c"):
        limits.take(key)
    limits.take("a")  # a is recent again
    limits.take("d")
    assert len(limits) == 3
    assert limits.take("b") == 0.0  # b was forgotten: a fresh bucket
    assert limits.take("a") > 0


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBuckets(0, 1)
    with pytest.raises(ValueError):
        TokenBuckets(1, 0)
