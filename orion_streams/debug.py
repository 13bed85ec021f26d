"""Operator aid: `kill -USR1 <worker pid>` logs where every asyncio task is waiting."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from . import internals

log = logging.getLogger("orion.debug")


def _chain(coro: Any) -> list[str]:
    """Follow a coroutine's awaits down to where it is suspended."""
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            frames.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return frames


def dump_tasks() -> None:
    lines = []
    for task in asyncio.all_tasks():
        lines.append(f"--- {task.get_name()}")
        lines.extend(f"    {f}" for f in _chain(task.get_coro()))
    log.warning("asyncio tasks:\n%s", "\n".join(lines))


def dump_consumer(app: Any) -> None:
    faust_consumer: Any = app.consumer
    try:
        consumer = internals.aiokafka_consumer(faust_consumer)
        assigned = sorted(consumer.assignment())
        paused = sorted(consumer.paused())
        positions = {f"{tp.topic}[{tp.partition}]": internals.fetch_position(consumer, tp) for tp in assigned}
        log.warning("consumer: paused=%s positions=%s", [f"{t.topic}[{t.partition}]" for t in paused], positions)
        log.warning(
            "faust consumer paused=%s flow_active=%s flow_control=%s rebalancing=%s",
            sorted(internals.paused_partitions(app.consumer)),
            faust_consumer.flow_active, app.flow_control.is_active(), app.rebalancing,
        )
    except Exception as exc:
        log.warning("could not inspect consumer: %r", exc)


def install(app: Any) -> None:
    """SIGUSR1 logs the consumer's state and every asyncio task of `app`'s worker."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, dump_all, app)


def dump_all(app: Any) -> None:
    dump_consumer(app)
    dump_tasks()
