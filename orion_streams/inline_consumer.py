"""The worker's Kafka consumer on the worker's own event loop, not in a thread of its own.

Faust runs its consumer in a service thread with a second event loop, and every call
between the two (each fetch, each commit, each rebalance callback) is a method-queue
hand-off with a wake-up of the other loop; both loops share one interpreter lock. On this
box's profiles the consumer thread took 11-24 % of the worker's samples, about half of it
waiting for the lock, and the hand-offs showed as the event loops' own C code. The thread
buys one thing: heartbeats that go on while the main loop is busy. Orion's agents hand
control back to the loop at least every batch (BATCH_SIZE events) and the session
timeout is 10 s, so the heartbeat task on the main loop is never late by much.

`ORION_CONSUMER_THREAD=true` keeps Faust's thread (the default before 2026-12).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from mode import Service
from mode.utils.futures import maybe_async

_applied = False


class InlineConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer "thread", run as a plain service on the caller's loop.

    Every override below puts back `mode.Service`'s own behaviour where
    `mode.ServiceThread` replaces it to start, stop and talk to a thread."""

    wait_for_shutdown = False  # no thread to signal that it has shut down

    def __init__(self, consumer: Any, *, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        loop = loop or asyncio.get_event_loop_policy().get_event_loop()
        super().__init__(consumer, loop=loop, thread_loop=loop, **kwargs)

    async def call_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await maybe_async(fun(*args, **kwargs))  # as the method queue calls it

    async def cast_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.add_future(maybe_async(fun(*args, **kwargs)))  # kept, and cancelled when it stops

    async def maybe_start(self) -> bool:
        return await Service.maybe_start(self)

    async def start(self) -> None:
        await Service.start(self)

    async def stop(self) -> None:
        await Service.stop(self)

    async def on_stop(self) -> None:
        await super().on_stop()
        await self.on_thread_stop()  # stops the aiokafka consumer

    async def crash(self, exc: BaseException) -> None:
        await Service.crash(self, exc)

    def _stopped_set(self) -> None:
        Service._stopped_set(self)

    def set_shutdown(self) -> None:
        Service.set_shutdown(self)

    async def _stop_children(self) -> None:
        await Service._stop_children(self)

    async def _stop_futures(self) -> None:
        await Service._stop_futures(self)

    async def _stop_exit_stacks(self) -> None:
        await Service._stop_exit_stacks(self)


def _new_consumer_thread(self: Any) -> faust_aiokafka.AIOKafkaConsumerThread:
    return InlineConsumerThread(self, loop=self.loop, beacon=self.beacon)


def apply() -> None:
    """Make the worker's consumer run on its event loop (called when the app loads)."""
    global _applied
    if not _applied:
        faust_aiokafka.Consumer._new_consumer_thread = _new_consumer_thread  # type: ignore[method-assign]
        _applied = True
