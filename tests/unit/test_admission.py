"""Admission control: refuse at the door while a new order would wait too long for its
decision (orders in flight over the decision rate), or too many are in flight."""

from __future__ import annotations

from orion_streams.services.admission import Admission, DecisionRate, Load


def door(delay: float = 5.0, in_flight: int = 10_000) -> Admission:
    return Admission(max_decision_delay=delay, max_in_flight=in_flight)


def deciding(admission: Admission, per_second: int, seconds: range) -> None:
    for second in seconds:
        admission.decided(float(second), per_second)


def test_the_rate_is_the_best_recent_window() -> None:
    rate = DecisionRate(window=5, memory=30)
    for second in range(100, 110):
        rate.add(second + 0.5, 20)
    assert rate.best(110.0) == 20.0
    assert rate.best(125.0) == 20.0  # a lull does not forget the capacity at once
    assert rate.best(141.0) == 0.0  # but it does after `memory`
    assert DecisionRate().best(0.0) == 0.0


def test_a_burst_after_a_lull_is_measured_from_its_first_decision() -> None:
    rate = DecisionRate(window=10, memory=13)
    rate.add(500.2, 30)
    rate.add(501.2, 30)
    assert rate.best(501.5) == 30.0  # not 6/s: the window starts at the first decision


def test_an_idle_system_admits() -> None:
    admission = door()
    admission.update(Load(in_flight=3, queue_delay=0.2, at=100.0))
    assert admission.verdict(100.1) is None
    assert admission.snapshot(100.1)["open"] is True


def busy(admission: Admission, since: float) -> None:
    """The pipeline has been full (orders in flight over MIN_IN_FLIGHT) since `since`."""
    admission.update(Load(in_flight=Admission.MIN_IN_FLIGHT, queue_delay=0.0, at=since))
    assert admission.verdict(since) is None


def test_a_new_order_that_would_wait_too_long_is_refused() -> None:
    admission = door(delay=5.0)
    # 30 decisions/s: 150 in flight wait 5 s; the door leaves 25 % room over that (187.5).
    deciding(admission, 30, range(90, 100))
    busy(admission, 96.0)
    admission.update(Load(in_flight=180, queue_delay=4.0, at=100.0))
    assert admission.verdict(100.1) is None
    for _ in range(8):
        admission.admitted()
    refusal = admission.verdict(100.2)
    assert refusal is not None and refusal.reason == "decision_delay"
    assert "188 orders in flight at 30.0 decisions/s would wait 6.3s" in refusal.detail
    assert refusal.retry_after == 2


def test_the_rate_counts_for_the_partitions_this_worker_does_not_see() -> None:
    admission = door(delay=5.0)
    deciding(admission, 10, range(90, 100))  # this worker's quarter of the partitions
    busy(admission, 96.0)
    admission.update(Load(in_flight=249, queue_delay=1.0, at=100.0, share=0.25))
    assert admission.capacity(100.0) == 40.0
    assert admission.verdict(100.0) is None  # 249 < 40/s * 5 s * 1.25
    admission.update(Load(in_flight=250, queue_delay=1.0, at=100.0, share=0.25))
    assert admission.verdict(100.0) is not None


def test_a_slow_start_keeps_a_first_batch_coming() -> None:
    admission = door()
    admission.decided(0.5)  # one decision: 1/s, room for 5 by the estimate alone
    admission.update(Load(in_flight=Admission.MIN_IN_FLIGHT - 1, queue_delay=0.0, at=0.0))
    assert admission.verdict(1.0) is None
    admission.admitted()
    assert admission.verdict(1.0) is None  # full now: its rate is learnt for LEARN_SECONDS
    assert admission.verdict(1.0 + Admission.LEARN_SECONDS) is not None


def test_without_any_decision_of_late_only_the_stall_guard_and_the_bound_apply() -> None:
    admission = door(delay=5.0)
    admission.update(Load(in_flight=300, queue_delay=2.0, at=0.0))
    assert admission.verdict(0.1) is None  # a cold worker hit by a burst takes it
    admission.update(Load(in_flight=300, queue_delay=16.0, at=1.0))
    assert admission.verdict(1.1) is not None  # but not once the queue stands still


def test_a_stalled_queue_closes_the_door_whatever_the_estimate() -> None:
    admission = door(delay=2.0)
    deciding(admission, 100, range(90, 100))
    admission.update(Load(in_flight=25, queue_delay=6.5, at=100.0))
    refusal = admission.verdict(100.0)
    assert refusal is not None and refusal.reason == "decision_delay" and "6.5s" in refusal.detail


def test_the_in_flight_bound_holds_regardless_of_rate() -> None:
    admission = door(in_flight=10)
    deciding(admission, 1_000, range(90, 100))
    admission.update(Load(in_flight=9, queue_delay=0.0, at=100.0))
    assert admission.verdict(100.1) is None
    admission.admitted()
    refusal = admission.verdict(100.1)
    assert refusal is not None and refusal.reason == "in_flight"


def test_a_stale_reading_opens_the_door() -> None:
    admission = door(in_flight=10)
    assert admission.verdict(0.0) is None  # no reading yet
    admission.update(Load(in_flight=10_000, queue_delay=60.0, at=0.0))
    assert admission.verdict(1.0) is not None
    assert admission.verdict(6.0) is None
    assert admission.snapshot(6.0)["stale"] is True


def test_a_worker_without_order_partitions_relies_on_the_other_bounds() -> None:
    admission = door()
    admission.update(Load(in_flight=500, queue_delay=1.0, at=0.0, share=0.0))
    assert admission.capacity(0.0) is None and admission.verdict(0.0) is None


def test_a_burst_is_not_refused_while_the_pipeline_fills_up_then_by_its_own_rate() -> None:
    admission = door(delay=5.0)
    deciding(admission, 2, range(88, 100))  # a trickle before: 2/s
    admission.update(Load(in_flight=300, queue_delay=0.3, at=100.0))
    assert admission.verdict(100.0) is None  # 300 in flight at 2/s, but the burst just began
    assert admission.verdict(102.9) is None
    deciding(admission, 80, range(100, 103))  # the burst decided at 80/s
    admission.update(Load(in_flight=300, queue_delay=2.0, at=103.0))
    assert admission.capacity(103.5) == 80.0  # measured over the burst, not the 10 s before
    assert admission.verdict(103.5) is None  # 300 < 80/s * 5 s * 1.25
    admission.decided(103.5, 80)
    admission.update(Load(in_flight=600, queue_delay=3.0, at=104.0))
    refusal = admission.verdict(104.0)
    assert refusal is not None and "at 80.0 decisions/s" in refusal.detail
    # Below MIN_IN_FLIGHT the pipeline is not full: the next burst is learnt again.
    admission.update(Load(in_flight=10, queue_delay=0.0, at=120.0))
    assert admission.verdict(120.0) is None
    admission.update(Load(in_flight=Admission.LEARN_IN_FLIGHT - 1, queue_delay=0.0, at=121.0))
    assert admission.verdict(121.0) is None
    # While it learns, a bound holds: an overload waits for the estimate.
    admission.admitted()
    refusal = admission.verdict(121.5)
    assert refusal is not None and "while the decision rate is measured" in refusal.detail
    assert refusal.retry_after == 3  # when the estimate takes over
