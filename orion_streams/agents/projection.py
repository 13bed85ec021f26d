"""The projection agent: writes order states, the audit trail and stock levels to PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import random

import faust

from .. import records
from ..adapters.postgres import AuditContext
from ..app import app, projection_inputs, runtime
from ..domain import events as e
from .common import ACTOR_HEADER, CORRELATION_HEADER, dead_letter, header

log = logging.getLogger("orion.projection")

BATCH_SIZE = 500
BATCH_WITHIN = 0.05


@app.agent(projection_inputs, concurrency=1)
async def project(stream: faust.StreamT[bytes]) -> None:
    """Batch events into one transaction each; retry while PostgreSQL is away."""
    await runtime.ready()
    async for batch in stream.take_events(BATCH_SIZE, within=BATCH_WITHIN):  # type: ignore[attr-defined]
        statuses: list[e.OrderStatusChanged] = []
        audit: list[tuple[e.AuditEntry, AuditContext]] = []
        levels: list[e.StockLevelChanged] = []
        adjustments: list[e.StockAdjusted | e.AdjustmentRejected] = []
        for event in batch:
            try:
                message = records.decode(event.value)
            except records.BadRecord as exc:
                await dead_letter(event, str(exc))
                continue
            match message:
                case e.OrderStatusChanged():
                    statuses.append(message)
                case e.AuditEntry():
                    ctx = AuditContext(header(event, CORRELATION_HEADER), header(event, ACTOR_HEADER))
                    audit.append((message, ctx))
                case e.StockLevelChanged():
                    levels.append(message)
                case e.StockAdjusted() | e.AdjustmentRejected():
                    adjustments.append(message)
                case e.LowStockDetected():
                    pass  # alerts are the email and websocket agents' business
                case _:
                    await dead_letter(event, f"{type(message).__name__} is not projected")
        await _write_with_retry(statuses, audit, levels, adjustments)


async def _write_with_retry(
    statuses: list[e.OrderStatusChanged],
    audit: list[tuple[e.AuditEntry, AuditContext]],
    levels: list[e.StockLevelChanged],
    adjustments: list[e.StockAdjusted | e.AdjustmentRejected],
) -> None:
    delay = 0.1
    attempt = 0
    while True:
        attempt += 1
        try:
            await runtime.store.project(statuses, audit, levels, adjustments)
            return
        except Exception as exc:  # the database is away or refused: never drop the batch
            log.warning("projection write failed (attempt %d): %s; retrying in %.1fs", attempt, exc, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

