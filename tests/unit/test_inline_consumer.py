"""The worker's consumer runs on the worker's own event loop (orion_streams/inline_consumer.py)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

from orion_streams import inline_consumer


async def test_the_workers_consumer_is_built_on_its_own_loop_without_a_thread(tmp_path: Any) -> None:
    from orion_streams.app import create_app
    from orion_streams.config import Settings

    settings = Settings(state_dir=tmp_path)
    app = create_app(settings, routes=False).app
    assert settings.consumer_thread is False  # the default; create_app applied it
    assert faust_aiokafka.Consumer._new_consumer_thread is inline_consumer._new_consumer_thread
    thread = inline_consumer._new_consumer_thread(app.consumer)
    assert isinstance(thread, inline_consumer.InlineConsumerThread)
    assert thread.thread_loop is thread.parent_loop
    assert thread._thread is None  # no WorkerThread made


async def test_calls_to_the_consumer_run_right_here_sync_or_async(tmp_path: Any) -> None:
    from orion_streams.app import create_app
    from orion_streams.config import Settings

    app = create_app(Settings(state_dir=tmp_path), routes=False).app

    thread = inline_consumer.InlineConsumerThread(app.consumer, loop=asyncio.get_running_loop())
    seen: list[Any] = []

    def plain(x: int) -> int:
        seen.append(threading.current_thread())
        return x + 1

    async def coroutine(x: int, *, y: int) -> int:
        seen.append(threading.current_thread())
        return x * y

    assert await thread.call_thread(plain, 1) == 2
    assert await thread.call_thread(coroutine, 3, y=4) == 12
    assert seen == [threading.current_thread()] * 2
