"""What a worker runs besides its agents: closing its clients when it stops, the debug
signal, and keeping the catalog fresh."""

from __future__ import annotations

import asyncio
import logging

import mode

from .. import metrics, tracing
from ..app import app, runtime

log = logging.getLogger("orion.worker")


@app.service
class RuntimeLifecycle(mode.Service):
    """Closes the database pool, the payment client and the admin client on shutdown, drops
    this process's live gauges from a shared metrics directory and flushes buffered spans."""

    async def on_stop(self) -> None:
        await runtime.close()
        metrics.process_exited()
        await asyncio.to_thread(tracing.shutdown)


@app.task
async def install_debug_signal() -> None:
    from ..debug import install

    install()


@app.timer(interval=30.0)
async def refresh_catalog() -> None:
    """Pick up price and product changes made in PostgreSQL."""
    try:
        await (await runtime.ready()).refresh_catalog()
    except Exception as exc:  # the database may be away; the next tick tries again
        log.warning("catalog refresh failed: %s", exc)
