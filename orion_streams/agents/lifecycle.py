"""What a worker runs besides its agents: closing its clients when it stops, the debug
signal, and keeping the catalog fresh."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

import mode

from .. import metrics, tracing

if TYPE_CHECKING:
    from ..app import Orion
    from ..bootstrap import Runtime

log = logging.getLogger("orion.worker")


class RuntimeLifecycle(mode.Service):
    """Closes the database pool, the payment client and the admin client on shutdown, drops
    this process's live gauges from a shared metrics directory and flushes buffered spans."""

    def __init__(self, runtime: Runtime, **kwargs: Any) -> None:
        self.runtime = runtime
        super().__init__(**kwargs)

    async def on_stop(self) -> None:
        await self.runtime.close()
        metrics.process_exited()
        await asyncio.to_thread(tracing.shutdown)


async def refresh_catalog(runtime: Runtime) -> None:
    """Pick up price and product changes made in PostgreSQL."""
    try:
        await (await runtime.ready()).refresh_catalog()
    except Exception as exc:  # the database may be away; the next tick tries again
        log.warning("catalog refresh failed: %s", exc)


def register(orion: Orion) -> None:
    """The worker's lifecycle service, its debug signal and the catalog's refresh timer."""
    from ..debug import install

    runtime, app = orion.runtime, orion.app
    # Started with the app's other services, after table recovery (an instance, not a class).
    app.service(cast(Any, RuntimeLifecycle(runtime, beacon=app.beacon)))

    async def install_debug_signal() -> None:
        install(app)

    async def refresh() -> None:
        await refresh_catalog(runtime)

    app.task(install_debug_signal)
    app.timer(interval=30.0, name="orion_streams.agents.lifecycle.refresh_catalog")(refresh)
