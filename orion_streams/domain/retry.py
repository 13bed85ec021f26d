"""How long to wait before trying again: one policy for every retry in Orion.

Delays double from a first delay up to a cap, and each is spread by jitter so that many
callers that failed together do not retry together. A loop keeps a `Backoff`; a retry whose
count is stored (an email's attempts, a request asked again) takes `ceiling` of its count.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def ceiling(attempt: int, first: float, cap: float) -> float:
    """The delay before retry `attempt` (1 for the first), without jitter: `first`, twice
    that, four times ... never more than `cap`."""
    return min(cap, first * 2.0 ** max(0, attempt - 1))


def spread(delay: float, jitter: float) -> float:
    """`delay` times 0.5 to 1.5, for `jitter` in [0, 1)."""
    return delay * (0.5 + jitter)


class Backoff:
    """The delays of one retry loop: `next()` before each retry, `reset()` after a success."""

    def __init__(self, first: float, cap: float, jitter: Callable[[], float] = random.random) -> None:
        self.first, self.cap, self.jitter = first, cap, jitter
        self.attempt = 0

    def next(self) -> float:
        """The pause before the next retry (seconds)."""
        self.attempt += 1
        return spread(ceiling(self.attempt, self.first, self.cap), self.jitter())

    def reset(self) -> None:
        self.attempt = 0
