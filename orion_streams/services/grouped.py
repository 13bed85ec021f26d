"""Group commit: calls made at about the same time share one write.

Each caller hands in its item and waits until the write that carries it is done (or sees
the exception that write raised). One write is under way at a time; items that arrive
meanwhile go together in the next one, so under load a write carries as many items as
arrived while the previous one ran, and alone an item waits for nothing but its own write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Grouped(Generic[T]):
    """`await submit(item)` returns once `write` has taken a list with `item` in it."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]], *, limit: int = 500) -> None:
        self._write = write
        self._limit = limit
        self._items: list[T] = []
        self._waiting: list[asyncio.Future[None]] = []
        self._running: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._items.append(item)
        self._waiting.append(done)
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._drain())
        await done

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # items submitted in this turn of the loop join the first write
        while self._items:
            items, waiting = self._items[: self._limit], self._waiting[: self._limit]
            del self._items[: self._limit], self._waiting[: self._limit]
            try:
                await self._write(items)
            except asyncio.CancelledError:
                for done in waiting + self._waiting:
                    done.cancel()
                self._items, self._waiting = [], []
                raise
            except Exception as exc:  # every caller of this write sees why it failed
                for done in waiting:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for done in waiting:
                    if not done.done():
                        done.set_result(None)
