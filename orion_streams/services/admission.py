"""Admission control: refuse an order at the door rather than accept it and fail it late.

Orion decides orders at the rate its partitions allow. Accepting faster than that only
grows queues, and an order that waits long enough is as good as failed for the shopper.
So `POST /v1/orders` asks here first, and the answer rests on two readings of the system
of record, shared by every worker: how many accepted orders are undecided (in flight), and
how long the orders at the head of the queue have waited for their stock (the queue
delay). Above either bound a new order is refused with 503 and a Retry-After; below them
it is accepted and then decided on its merits. A reading too old to trust opens the door:
monitoring trouble must not stop sales.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Load:
    """One reading of the orders in flight, taken at `at` (monotonic seconds)."""

    in_flight: int
    queue_delay: float
    at: float


@dataclass(frozen=True)
class Refusal:
    """Why an order is refused now, and when asking again makes sense (seconds)."""

    reason: str
    detail: str
    retry_after: int


class Admission:
    """Decides, per order, from the latest `Load` and the orders admitted since."""

    def __init__(self, *, max_decision_delay: float, max_in_flight: int, stale_after: float = 5.0) -> None:
        self.max_decision_delay = max_decision_delay
        self.max_in_flight = max_in_flight
        self.stale_after = stale_after
        self.load: Load | None = None
        self._admitted_since = 0

    def update(self, load: Load) -> None:
        self.load = load
        self._admitted_since = 0

    def admitted(self) -> None:
        """An order was accepted since the last reading (counts against the in-flight bound)."""
        self._admitted_since += 1

    def verdict(self, now: float) -> Refusal | None:
        """None to accept; a Refusal to turn the order away."""
        load = self.load
        if load is None or now - load.at > self.stale_after:
            return None
        if load.queue_delay > self.max_decision_delay:
            over = load.queue_delay - self.max_decision_delay
            return Refusal(
                "decision_delay",
                f"orders wait {load.queue_delay:.1f}s for a decision (limit {self.max_decision_delay:g}s)",
                _clamp(math.ceil(over) + 1),
            )
        in_flight = load.in_flight + self._admitted_since
        if in_flight >= self.max_in_flight:
            return Refusal(
                "in_flight",
                f"{in_flight} orders are being decided (limit {self.max_in_flight})",
                2,
            )
        return None

    def snapshot(self, now: float) -> dict[str, object]:
        """What /ready shows about the door."""
        load = self.load
        refusal = self.verdict(now)
        return {
            "open": refusal is None,
            "reason": refusal.detail if refusal else None,
            "in_flight": None if load is None else load.in_flight + self._admitted_since,
            "queue_delay_seconds": None if load is None else round(load.queue_delay, 3),
            "reading_age_seconds": None if load is None else round(now - load.at, 3),
            "stale": load is None or now - load.at > self.stale_after,
            "max_decision_delay_seconds": self.max_decision_delay,
            "max_in_flight": self.max_in_flight,
        }


def _clamp(seconds: int) -> int:
    return max(1, min(30, seconds))
