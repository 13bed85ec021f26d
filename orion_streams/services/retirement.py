"""When state kept for a finished order may be forgotten.

An order's saga and its holds are kept a retention after the order ended, so redelivered
and repeated messages still find them and change nothing; then they are deleted (a
tombstone on the changelog, so compaction drops them and recovery does not bring them
back). Deadlines live in a heap, so each tick costs in proportion to what is due, never to
everything stored.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass
class RetirementQueue:
    """Keys and when they may be forgotten; the owner checks each due key is still done."""

    retention: float
    _heap: list[tuple[float, int, str]] = field(default_factory=list)
    _seq: int = 0

    def __len__(self) -> int:
        return len(self._heap)

    def ended(self, key: str, at: float) -> None:
        """`key` reached its end at `at` (epoch seconds)."""
        self._seq += 1
        heapq.heappush(self._heap, (at + self.retention, self._seq, key))

    def due(self, now: float, limit: int = 1000) -> list[str]:
        """Keys whose retention has run out, oldest first; at most `limit` per call, so one
        tick never holds the agent for long after a pause."""
        out: list[str] = []
        while self._heap and self._heap[0][0] <= now and len(out) < limit:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def clear(self) -> None:
        self._heap.clear()
