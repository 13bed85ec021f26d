"""Admission control: refuse at the door while orders wait too long or too many are in flight."""

from __future__ import annotations

from orion_streams.services.admission import Admission, Load


def door(**kw: float) -> Admission:
    return Admission(max_decision_delay=kw.get("delay", 5.0), max_in_flight=int(kw.get("in_flight", 100)))


def test_an_idle_system_admits() -> None:
    admission = door()
    admission.update(Load(in_flight=3, queue_delay=0.2, at=100.0))
    assert admission.verdict(100.1) is None
    assert admission.snapshot(100.1)["open"] is True


def test_a_long_queue_closes_the_door_with_a_retry_after() -> None:
    admission = door(delay=5.0)
    admission.update(Load(in_flight=50, queue_delay=7.4, at=100.0))
    refusal = admission.verdict(100.2)
    assert refusal is not None and refusal.reason == "decision_delay"
    assert refusal.retry_after == 4  # 2.4 s over the bound, plus one
    assert "7.4s" in refusal.detail


def test_orders_admitted_since_the_reading_count_against_the_in_flight_bound() -> None:
    admission = door(in_flight=10)
    admission.update(Load(in_flight=8, queue_delay=0.0, at=0.0))
    admission.admitted()
    assert admission.verdict(0.1) is None
    admission.admitted()
    refusal = admission.verdict(0.1)
    assert refusal is not None and refusal.reason == "in_flight"
    admission.update(Load(in_flight=2, queue_delay=0.0, at=0.5))
    assert admission.verdict(0.6) is None


def test_a_stale_reading_opens_the_door() -> None:
    admission = door()
    assert admission.verdict(0.0) is None  # no reading yet
    admission.update(Load(in_flight=10_000, queue_delay=60.0, at=0.0))
    assert admission.verdict(1.0) is not None
    assert admission.verdict(6.0) is None
    assert admission.snapshot(6.0)["stale"] is True


def test_retry_after_stays_within_reason() -> None:
    admission = door(delay=1.0)
    admission.update(Load(in_flight=1, queue_delay=500.0, at=0.0))
    refusal = admission.verdict(0.0)
    assert refusal is not None and refusal.retry_after == 30
