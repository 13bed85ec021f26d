"""The ops console's `console.stats`: what the order pipeline did in the last interval, from
the `OrderStatusChanged` events every worker's live feed sees (all of them, cluster-wide).

Pure: no clock and no I/O. `observe` each status change, `roll` once per interval for the
message and a fresh interval. Nothing is kept per order, so memory stays bounded whatever
the rate: counters, the largest latency, and at most `max_samples` latencies per interval
(a uniform reservoir sample beyond that, so p50 and p95 become estimates while `count` and
`max` stay exact).
"""

from __future__ import annotations

import math
import random
from datetime import datetime
from typing import Any

from .. import records

PENDING = "PENDING"
# The first settled statuses an order can reach, and the statuses it reaches them from.
SETTLED = ("CONFIRMED", "REJECTED", "PAYMENT_FAILED", "CANCELLED")
UNSETTLED = frozenset({"PENDING", "RESERVED"})
MAX_SAMPLES = 2_000


def _epoch(iso: str) -> float:
    """Seconds since the epoch of an ISO 8601 time as Orion writes them (…Z)."""
    return datetime.fromisoformat(iso).timestamp()


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of a sorted, non-empty list."""
    return ordered[max(1, math.ceil(len(ordered) * fraction)) - 1]


class ConsoleStats:
    """Orders accepted and settled, and their latency (created_at to the settled status's
    `at`, in milliseconds), per interval."""

    def __init__(self, max_samples: int = MAX_SAMPLES, rng: random.Random | None = None) -> None:
        if max_samples < 1:
            raise ValueError("max_samples must be at least 1")
        self.max_samples = max_samples
        self._rng = rng or random.Random()
        self._reset()

    def _reset(self) -> None:
        self.accepted = 0
        self.outcomes = dict.fromkeys(SETTLED, 0)
        self.count = 0  # latencies measured this interval (samples may hold fewer)
        self.max_ms: float | None = None
        self.samples: list[float] = []

    def observe(self, status: str, previous: str | None, created_at: str | None, at: str | None) -> None:
        """One status change (statuses as their names)."""
        if previous is None:
            if status == PENDING:
                self.accepted += 1
            return
        if status not in self.outcomes or previous not in UNSETTLED:
            return  # not an order's first settled status (e.g. CONFIRMED -> CANCELLED)
        self.outcomes[status] += 1
        if not created_at or not at:
            return
        try:
            latency = (_epoch(at) - _epoch(created_at)) * 1000.0
        except (TypeError, ValueError):  # a time it cannot read: counted, not measured
            return
        latency = max(0.0, latency)
        self.count += 1
        if self.max_ms is None or latency > self.max_ms:
            self.max_ms = latency
        if len(self.samples) < self.max_samples:
            self.samples.append(latency)
        else:  # reservoir sampling: each of the `count` latencies kept with equal chance
            slot = self._rng.randrange(self.count)
            if slot < self.max_samples:
                self.samples[slot] = latency

    def roll(self, at: str, interval_s: float) -> dict[str, Any]:
        """The `console.stats` message of the interval that ends now; starts the next one."""
        ordered = sorted(self.samples)
        latency: dict[str, Any] = {
            "count": self.count,
            "p50": round(percentile(ordered, 0.50), 1) if ordered else None,
            "p95": round(percentile(ordered, 0.95), 1) if ordered else None,
            "max": round(self.max_ms, 1) if self.max_ms is not None else None,
        }
        message = {
            "type": "console.stats",
            "at": at,
            "interval_s": interval_s,
            "accepted": self.accepted,
            "outcomes": dict(self.outcomes),
            "latency_ms": latency,
        }
        self._reset()
        return message

    def clear(self) -> None:
        """Forget the interval so far (the console feed starts again after a pause)."""
        self._reset()


# A worker not heard from for this long is left out of `console.workers`.
STALE_AFTER = 10.0
# Workers remembered at most (a bad producer's keys must not grow the map for ever).
MAX_WORKERS = 1_000


class BadHeartbeat(ValueError):
    """A `worker-status` record that is not a WorkerStatus heartbeat."""


class Workers:
    """The latest heartbeat of each worker (topic `worker-status`) and when it was seen."""

    def __init__(self, stale_after: float = STALE_AFTER, max_workers: int = MAX_WORKERS) -> None:
        self.stale_after = stale_after
        self.max_workers = max_workers
        # worker -> (seen at: monotonic seconds, seen at: epoch seconds, the heartbeat)
        self._latest: dict[str, tuple[float, float, dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self._latest)

    def heard(self, key: str | None, value: Any, monotonic: float, epoch: float) -> None:
        """A record of `worker-status`: a heartbeat (parsed JSON), or None, a tombstone: the
        worker `key` stopped. Raises BadHeartbeat for anything else."""
        if value is None:
            if key is None:
                raise BadHeartbeat("a tombstone without a key")
            self._latest.pop(key, None)
            return
        if not isinstance(value, dict) or value.get("type") != "WorkerStatus":
            raise BadHeartbeat("not a WorkerStatus")
        worker = value.get("worker")
        if not isinstance(worker, str) or not worker or (key is not None and key != worker):
            raise BadHeartbeat("no worker id, or not the record's key")
        admission, partitions, projection = value.get("admission"), value.get("partitions"), value.get("projection")
        if not isinstance(admission, dict) or not isinstance(partitions, list) or not isinstance(projection, list):
            raise BadHeartbeat("admission, partitions or projection missing")
        self._latest.pop(worker, None)  # newest last: the oldest go first when full
        self._latest[worker] = (monotonic, epoch, value)
        self.prune(monotonic)
        while len(self._latest) > self.max_workers:
            del self._latest[next(iter(self._latest))]

    def prune(self, monotonic: float) -> None:
        """Forget the workers not heard from for `stale_after` seconds."""
        stale = [w for w, (seen, _, _) in self._latest.items() if monotonic - seen > self.stale_after]
        for worker in stale:
            del self._latest[worker]

    def message(self, at: str, monotonic: float) -> dict[str, Any]:
        """`console.workers`: every worker heard from in the last `stale_after` seconds."""
        self.prune(monotonic)
        workers = [
            {
                "worker": worker,
                "seen_at": records.utc_iso(epoch, "milliseconds"),
                "age_s": round(max(0.0, monotonic - seen), 1),
                "admission": beat["admission"],
                "partitions": beat["partitions"],
                "projection": beat["projection"],
            }
            for worker, (seen, epoch, beat) in sorted(self._latest.items())
        ]
        return {"type": "console.workers", "at": at, "workers": workers}
