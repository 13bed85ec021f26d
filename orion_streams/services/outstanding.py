"""Requests waiting for an answer, and the evidence that one was lost.

A request (ReserveLine, AuthorizePayment, ...) lands at an offset of its topic partition.
Its consumer sends the answer, waits for the broker, and only then commits past that
offset; the answer lands on the asker's own partition of `order-events`. So once the
group's committed offset passes the request, its answer, if there is one, is already in
`order-events` below that partition's end offset read afterwards (the mark); once the
asker has committed past the mark it has read the answer. A request still unanswered then
was lost (a crash between steps, a Faust rebalance bug) and is asked again.

No clock decides that a request is late, so a long queue is never mistaken for a loss and
a backlog brings no repeats. Each step costs in proportion to the requests that move on:
entries sit in heaps ordered by offset, and an answered entry is dropped lazily when its
offset comes up.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

from ..domain.retry import ceiling

TopicPartition = tuple[str, int]


@dataclass
class _Waiting:
    order: str
    request_tp: TopicPartition
    bound: int  # the request's offset, or an offset at or after it
    reply_partition: int
    sent_at: float
    attempts: int
    token: int
    mark: int | None = None


@dataclass
class OutstandingRequests:
    """The requests of the orders this worker owns that have not been answered yet.

    `backoff` spaces repeats of a request that keeps going unanswered (a receiver that
    never answers must not be asked at the pace of the pipeline forever).
    """

    backoff: float = 1.0
    max_backoff: float = 300.0
    RESEND_CHECK = 30.0  # seconds after which a repeat that never went out is tried again
    _entries: dict[Hashable, _Waiting] = field(default_factory=dict)
    _by_order: dict[str, set[Hashable]] = field(default_factory=dict)
    _sent: dict[TopicPartition, list[tuple[int, int, Hashable]]] = field(default_factory=dict)
    _to_mark: list[tuple[int, Hashable]] = field(default_factory=list)
    _marked: dict[int, list[tuple[int, int, Hashable]]] = field(default_factory=dict)
    _delayed: list[tuple[float, int, Hashable]] = field(default_factory=list)
    _tokens: itertools.count[int] = field(default_factory=itertools.count)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def sent(
        self, key: Hashable, order: str, request_tp: TopicPartition, offset: int,
        reply_partition: int, now: float,
    ) -> None:
        """A request for `order` is at `offset` of `request_tp` (or before it, when only an
        upper bound is known, as for requests found in recovered state)."""
        previous = self._entries.get(key)
        attempts = previous.attempts + 1 if previous is not None else 0
        token = next(self._tokens)
        self._entries[key] = _Waiting(order, request_tp, offset, reply_partition, now, attempts, token)
        self._by_order.setdefault(order, set()).add(key)
        heapq.heappush(self._sent.setdefault(request_tp, []), (offset, token, key))

    def keep_only(self, order: str, keys: Iterable[Hashable]) -> None:
        """`order` now waits for `keys` only: every other request of it was answered."""
        wanted = set(keys)
        for key in self._by_order.get(order, set()) - wanted:
            self._drop(key)

    def forget_order(self, order: str) -> None:
        self.keep_only(order, ())

    def forget_reply_partitions(self, partitions: Iterable[int]) -> None:
        """The orders of these partitions moved to another worker, which tracks them."""
        gone = set(partitions)
        for key in [k for k, w in self._entries.items() if w.reply_partition in gone]:
            self._drop(key)

    def request_partitions(self) -> set[TopicPartition]:
        """Where requests wait to be consumed: whose committed offsets the next step needs."""
        return {tp for tp, heap in self._sent.items() if heap}

    def consumed(self, committed: Mapping[TopicPartition, int]) -> set[int]:
        """Take the group's committed offsets; return the reply partitions whose end offsets
        must now be read (after `committed` was) and given to `mark`."""
        needs: set[int] = set()
        for tp, heap in self._sent.items():
            done = committed.get(tp)
            if done is None:
                continue
            while heap and heap[0][0] < done:
                _, token, key = heapq.heappop(heap)
                entry = self._entries.get(key)
                if entry is not None and entry.token == token:
                    self._to_mark.append((token, key))
                    needs.add(entry.reply_partition)
        return needs

    def mark(self, reply_end: Mapping[int, int]) -> None:
        """End offsets of reply partitions, read after the committed offsets of `consumed`."""
        waiting, self._to_mark = self._to_mark, []
        for token, key in waiting:
            entry = self._entries.get(key)
            if entry is None or entry.token != token:
                continue
            end = reply_end.get(entry.reply_partition)
            if end is None:
                self._to_mark.append((token, key))
                continue
            entry.mark = end
            heapq.heappush(self._marked.setdefault(entry.reply_partition, []), (end, token, key))

    def lost(self, read: Mapping[int, int], now: float) -> list[Hashable]:
        """Requests whose answer the asker should have read by now (`read`: its committed
        offsets on the reply partitions) and did not. The caller sends each again and
        calls `sent` with the new offset."""
        out: list[Hashable] = []
        for partition, heap in self._marked.items():
            position = read.get(partition)
            if position is None:
                continue
            while heap and heap[0][0] <= position:
                _, token, key = heapq.heappop(heap)
                entry = self._entries.get(key)
                if entry is None or entry.token != token:
                    continue
                due = entry.sent_at + self._delay(entry.attempts)
                if due <= now:
                    out.append(key)
                else:
                    heapq.heappush(self._delayed, (due, token, key))
        while self._delayed and self._delayed[0][0] <= now:
            _, token, key = heapq.heappop(self._delayed)
            entry = self._entries.get(key)
            if entry is not None and entry.token == token:
                out.append(key)
        for key in out:
            # Should the repeat not get out (the broker away), bring the key up again;
            # a repeat that does get out calls `sent`, which makes this entry stale.
            entry = self._entries[key]
            heapq.heappush(self._delayed, (now + self.RESEND_CHECK, entry.token, key))
        return out

    def order_of(self, key: Hashable) -> str | None:
        entry = self._entries.get(key)
        return entry.order if entry is not None else None

    def _delay(self, attempts: int) -> float:
        """Nothing before the first repeat; then backoff, 2x, 4x ... up to the cap."""
        if attempts == 0:
            return 0.0
        return ceiling(attempts, self.backoff, self.max_backoff)

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        keys = self._by_order.get(entry.order)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_order[entry.order]
