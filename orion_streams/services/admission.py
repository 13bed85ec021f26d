"""Admission control: refuse an order at the door rather than accept it and fail it late.

Orion decides orders at the rate its partitions allow; accepting faster only grows queues,
and an order that waits long enough is as good as failed for the shopper. By Little's law
a new order waits about (orders in flight) / (orders decided per second), so the door
admits while that stays under `max_decision_delay`:

- orders in flight: accepted and undecided, read from PostgreSQL (shared by every worker),
  plus those this worker admitted since the reading;
- decisions per second: counted by this worker's saga for the partitions it owns, scaled
  by the share of partitions it owns, over the last ten seconds (the best of the last few
  such windows, so a pause of a second or two does not close the door);
- a stall guard: when the head of the queue has waited several times the bound (nothing
  moves), the door closes whatever the estimate says;
- a burst is learnt before it is judged: the estimate closes the door only once the orders in
  flight have stayed at MIN_IN_FLIGHT or more for LEARN_SECONDS (admitting up to
  LEARN_IN_FLIGHT meanwhile), and then counts the rate since they did if it beats the recent
  windows (the seconds before a burst, idle or a trickle, say nothing of what the pipeline
  decides when full).

A reading too old to trust opens the door: monitoring trouble must not stop sales.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Load:
    """One reading: orders in flight, how long the head of the queue has waited (seconds),
    the share of the order partitions whose decisions this worker counts, and when it was
    taken (monotonic seconds)."""

    in_flight: int
    queue_delay: float
    at: float
    share: float = 1.0


@dataclass(frozen=True)
class Refusal:
    """Why an order is refused now, and when asking again makes sense (seconds)."""

    reason: str
    detail: str
    retry_after: int


class DecisionRate:
    """Decisions per second, in one-second buckets: the best `window`-second rate seen in
    the last `memory` seconds. A window that reaches back before the first decision still
    remembered counts from that decision, so a burst after a lull is measured at once."""

    def __init__(self, *, window: int = 10, memory: int = 13) -> None:
        self.window = window
        self.memory = memory
        self._buckets: deque[list[int]] = deque()  # [second, count], oldest first
        self._cached: tuple[int, float] = (-1, 0.0)

    def add(self, now: float, count: int = 1) -> None:
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])
        while self._buckets and self._buckets[0][0] <= second - self.memory:
            self._buckets.popleft()

    def best(self, now: float) -> float:
        """The highest rate over any `window` seconds of the last `memory` (0: none)."""
        second = int(now)
        if self._cached[0] == second:
            return self._cached[1]
        counts = {s: c for s, c in self._buckets if s > second - self.memory}
        best = 0.0
        if counts:
            first = min(counts)
            for end in range(second - self.memory + self.window, second + 2):
                start = max(end - self.window, first)
                if start >= end:
                    continue
                total = sum(counts.get(s, 0) for s in range(start, end))
                best = max(best, total / max(end - start, 1))
        self._cached = (second, best)
        return best

    def since(self, start: float, now: float) -> float | None:
        """Decisions per second over the whole seconds between `start` and `now`; None
        with fewer than two of them to go by."""
        first, end = int(start) + 1, int(now)
        if end - first < 2:
            return None
        return sum(c for s, c in self._buckets if first <= s < end) / (end - first)


class Admission:
    """Decides, per order, from the latest `Load`, the decision rate and the orders
    admitted since the reading."""

    # Below this many orders in flight the door never closes for the delay estimate: enough
    # to keep the pipeline busy while its rate is being learnt (after a start or a lull).
    MIN_IN_FLIGHT = 100
    # The head of the queue waiting this many times the bound means nothing moves.
    STALL_FACTOR = 3.0
    # Room over the estimate: a pipeline that could decide faster with more in flight (larger
    # batches) gets the orders to show it; without it the measured rate would cap itself.
    HEADROOM = 1.25
    # Seconds the orders in flight must stay at MIN_IN_FLIGHT or more before the estimate can
    # close the door: a burst fills the pipeline faster than its first decisions come out,
    # and the rate of the seconds before it (a lull, a trickle) says nothing of its capacity.
    LEARN_SECONDS = 3.0
    # Orders in flight the door lets in while it learns: a burst of a few hundred is taken,
    # an overload waits for the estimate (a few seconds of work at the rates measured here).
    LEARN_IN_FLIGHT = 400

    def __init__(
        self, *, max_decision_delay: float, max_in_flight: int, stale_after: float = 5.0,
        rate: DecisionRate | None = None,
    ) -> None:
        self.max_decision_delay = max_decision_delay
        self.max_in_flight = max_in_flight
        self.stale_after = stale_after
        self.rate = rate or DecisionRate()
        self.load: Load | None = None
        self._admitted_since = 0
        self._busy_since: float | None = None  # when the orders in flight reached MIN_IN_FLIGHT

    def update(self, load: Load) -> None:
        self.load = load
        self._admitted_since = 0

    def admitted(self) -> None:
        """An order was accepted since the last reading (it counts as in flight)."""
        self._admitted_since += 1

    def decided(self, now: float, count: int = 1) -> None:
        """This worker's saga decided `count` orders."""
        self.rate.add(now, count)

    def capacity(self, now: float) -> float | None:
        """Estimated decisions per second of the whole system; None when this worker sees
        no decisions (it owns no order partitions). The best recent window, or the rate
        since the pipeline filled up if that is higher (a burst is measured by itself)."""
        load = self.load
        if load is None or load.share <= 0:
            return None
        best = self.rate.best(now)
        if self._busy_since is not None:
            best = max(best, self.rate.since(self._busy_since, now) or 0.0)
        return best / load.share

    def verdict(self, now: float) -> Refusal | None:
        """None to accept; a Refusal to turn the order away."""
        load = self.load
        if load is None or now - load.at > self.stale_after:
            return None
        in_flight = load.in_flight + self._admitted_since
        if in_flight >= self.max_in_flight:
            return Refusal("in_flight", f"{in_flight} orders are being decided (limit {self.max_in_flight})", 2)
        if load.queue_delay > self.STALL_FACTOR * self.max_decision_delay:
            return Refusal(
                "decision_delay",
                f"the oldest orders have waited {load.queue_delay:.1f}s for a decision "
                f"(limit {self.max_decision_delay:g}s)",
                _clamp(math.ceil(load.queue_delay - self.max_decision_delay)),
            )
        if in_flight < self.MIN_IN_FLIGHT:
            self._busy_since = None
            return None
        if self._busy_since is None:
            self._busy_since = now
        if now - self._busy_since < self.LEARN_SECONDS:
            # The pipeline is filling up: its rate is being learnt, and a bound holds meanwhile.
            if in_flight < self.LEARN_IN_FLIGHT or load.share <= 0:
                return None  # (a worker without order partitions has nothing to learn)
            return Refusal(
                "decision_delay",
                f"{in_flight} orders in flight while the decision rate is measured "
                f"(at most {self.LEARN_IN_FLIGHT} until then)",
                _clamp(math.ceil(self._busy_since + self.LEARN_SECONDS - now)),
            )
        capacity = self.capacity(now)
        if not capacity:
            return None  # no rate to go by (nothing decided of late): the stall guard watches
        allowed = capacity * self.max_decision_delay * self.HEADROOM
        if in_flight < allowed:
            return None
        return Refusal(
            "decision_delay",
            f"{in_flight} orders in flight at {capacity:.1f} decisions/s would wait "
            f"{in_flight / capacity:.1f}s (limit {self.max_decision_delay:g}s)",
            _clamp(math.ceil((in_flight - allowed) / capacity) + 1),
        )

    def snapshot(self, now: float) -> dict[str, object]:
        """What /ready shows about the door."""
        load = self.load
        refusal = self.verdict(now)
        capacity = self.capacity(now)
        return {
            "open": refusal is None,
            "reason": refusal.detail if refusal else None,
            "in_flight": None if load is None else load.in_flight + self._admitted_since,
            "decisions_per_second": None if capacity is None else round(capacity, 2),
            "queue_delay_seconds": None if load is None else round(load.queue_delay, 3),
            "reading_age_seconds": None if load is None else round(now - load.at, 3),
            "stale": load is None or now - load.at > self.stale_after,
            "max_decision_delay_seconds": self.max_decision_delay,
            "max_in_flight": self.max_in_flight,
        }


def _clamp(seconds: int) -> int:
    return max(1, min(30, seconds))
