"""Finished orders are forgotten a retention later, in time order, a bounded batch a tick."""

from __future__ import annotations

from orion_streams.services.retirement import RetirementQueue


def test_keys_come_due_a_retention_after_they_ended() -> None:
    queue = RetirementQueue(retention=60.0)
    queue.ended("b", at=20.0)
    queue.ended("a", at=10.0)
    assert queue.due(69.9) == []
    assert queue.due(70.0) == ["a"]
    assert queue.due(1_000.0) == ["b"]
    assert len(queue) == 0


def test_one_tick_takes_at_most_its_limit() -> None:
    queue = RetirementQueue(retention=0.0)
    for i in range(5):
        queue.ended(f"k{i}", at=float(i))
    assert queue.due(10.0, limit=2) == ["k0", "k1"]
    assert queue.due(10.0, limit=10) == ["k2", "k3", "k4"]
