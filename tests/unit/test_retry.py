"""The one retry policy (domain/retry.py)."""

from __future__ import annotations

import pytest

from orion_streams.domain.retry import Backoff, ceiling, spread


def test_delays_double_from_the_first_up_to_the_cap() -> None:
    assert [ceiling(n, 0.5, 30.0) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert ceiling(0, 0.5, 30.0) == 0.5  # no retry yet counts as the first


@pytest.mark.parametrize(("jitter", "factor"), [(0.0, 0.5), (0.5, 1.0), (0.999, 1.499)])
def test_jitter_spreads_a_delay_between_half_and_one_and_a_half_times(jitter: float, factor: float) -> None:
    assert spread(2.0, jitter) == pytest.approx(2.0 * factor)


def test_a_loop_backs_off_and_starts_again_after_a_success() -> None:
    backoff = Backoff(0.1, 5.0, jitter=lambda: 0.5)  # no spread: the ceilings themselves
    assert [backoff.next() for _ in range(8)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    backoff.reset()
    assert backoff.next() == pytest.approx(0.1)
