"""Email delivery tracking in PostgreSQL: a queue of messages with leases, and their history.

Every message is one row, unique by its idempotency key, so a redelivered event adds
nothing. Senders on any worker claim due rows with `FOR UPDATE SKIP LOCKED` and a lease:
two workers never send the same row at once, and a row whose sender died is claimed again
once its lease runs out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..domain.notifications import Notification
from . import schema as s
from .postgres import decode_cursor, encode_cursor, iso, jsonb_text

n = s.notifications


@dataclass(frozen=True)
class Claimed:
    """A message a sender holds for one attempt; `attempts` counts this one."""

    id: str
    key: str
    template: str
    recipients: tuple[str, ...]
    context: dict[str, Any]
    order_id: str | None
    sku: str | None
    correlation_id: str | None
    attempts: int
    created_at: datetime | None = None


# One statement whatever the batch size (arrays, not a VALUES list per row): it is compiled
# and prepared once, where a multi-row VALUES insert was compiled again for every batch.
_ENQUEUE = text(
    "insert into notifications (id, idempotency_key, order_id, sku, template, recipient, context, correlation_id) "
    "select id, key, order_id, sku, template, recipient, context::jsonb, correlation_id from unnest("
    "cast(:ids as text[]), cast(:keys as text[]), cast(:order_ids as text[]), cast(:skus as text[]), "
    "cast(:templates as text[]), cast(:recipients as text[]), cast(:contexts as text[]), "
    "cast(:correlation_ids as text[])) as t(id, key, order_id, sku, template, recipient, context, correlation_id) "
    "on conflict (idempotency_key) do nothing returning id"
)


class NotificationStore:
    """The notifications table; all methods are safe to call from many workers at once."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def enqueue(self, notifications: Sequence[Notification]) -> list[str]:
        """Queue messages not seen before; returns the ids of those actually added."""
        if not notifications:
            return []
        async with self.engine.begin() as conn:
            return await self.enqueue_in(conn, notifications)

    async def enqueue_in(self, conn: AsyncConnection, notifications: Sequence[Notification]) -> list[str]:
        """`enqueue` within a transaction the caller holds (senders are woken at its commit)."""
        if not notifications:
            return []
        unique = list({x.key: x for x in notifications}.values())
        columns = {
            "ids": [x.id for x in unique], "keys": [x.key for x in unique],
            "order_ids": [x.order_id for x in unique], "skus": [x.sku for x in unique],
            "templates": [x.template for x in unique], "recipients": [", ".join(x.recipients) for x in unique],
            "contexts": [jsonb_text(x.context) for x in unique],
            "correlation_ids": [x.correlation_id for x in unique],
        }
        added = [r.id for r in (await conn.execute(_ENQUEUE, columns)).all()]
        if added:
            await _notify(conn)
        return added

    async def claim_due(self, limit: int, lease: float) -> list[Claimed]:
        """Take up to `limit` queued messages that are due and not held by another sender."""
        if limit <= 0:
            return []
        due = (
            select(n.c.id)
            .where(
                n.c.status == "queued",
                n.c.next_attempt_at <= func.now(),
                (n.c.locked_until.is_(None)) | (n.c.locked_until < func.now()),
            )
            .order_by(n.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        stmt = (
            update(n)
            .where(n.c.id.in_(due))
            .values(
                attempts=n.c.attempts + 1,
                locked_until=func.now() + text(f"interval '{float(lease)} seconds'"),
                updated_at=func.now(),
            )
            .returning(n)
        )
        async with self.engine.begin() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            Claimed(
                id=r.id, key=r.idempotency_key, template=r.template,
                recipients=tuple(a.strip() for a in r.recipient.split(",") if a.strip()),
                context=r.context, order_id=r.order_id, sku=r.sku, correlation_id=r.correlation_id,
                attempts=r.attempts, created_at=r.created_at,
            )
            for r in rows
        ]

    async def mark_sent(self, id: str, *, server: str, message_id: str, subject: str) -> None:
        await self._set(
            id, status="sent", server=server, message_id=message_id, subject=subject,
            sent_at=func.now(), locked_until=None, last_error=None,
        )

    async def mark_retry(self, id: str, *, error: str, delay: float, server: str | None, subject: str | None) -> None:
        await self._set(
            id, last_error=error[:2000], server=server, subject=subject, locked_until=None,
            next_attempt_at=func.now() + text(f"interval '{float(delay)} seconds'"),
        )

    async def mark_failed(self, id: str, *, error: str, server: str | None, subject: str | None) -> None:
        await self._set(id, status="failed", last_error=error[:2000], server=server, subject=subject, locked_until=None)

    async def _set(self, id: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(n).where(n.c.id == id).values(updated_at=func.now(), **values))

    async def requeue(self, id: str) -> dict[str, Any] | None:
        """Send a failed message again from a fresh count of attempts; None if not failed."""
        stmt = (
            update(n)
            .where(n.c.id == id, n.c.status == "failed")
            .values(status="queued", attempts=0, next_attempt_at=func.now(), locked_until=None, updated_at=func.now())
            .returning(n)
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
            if row is not None:
                await _notify(conn)
        return _view(row._mapping) if row is not None else None

    async def get(self, id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(n).where(n.c.id == id))).first()
        return _view(row._mapping) if row is not None else None

    async def list_failed(self, *, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Emails given up on, the most recently failed first (ix_notifications_failed)."""
        query = select(n).where(n.c.status == "failed")
        if cursor:
            updated, key = decode_cursor(cursor)
            query = query.where(tuple_(n.c.updated_at, n.c.id) < tuple_(updated, key))
        query = query.order_by(n.c.updated_at.desc(), n.c.id.desc()).limit(limit + 1)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        page = rows[:limit]
        next_cursor = encode_cursor(page[-1].updated_at, page[-1].id) if len(rows) > limit else None
        return [_view(r._mapping) for r in page], next_cursor

    async def for_order(self, order_id: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(select(n).where(n.c.order_id == order_id).order_by(n.c.created_at, n.c.id))
            ).all()
        return [_view(r._mapping) for r in rows]


# Senders LISTEN on this channel; a commit that queues messages wakes them at once.
CHANNEL = "orion_notifications"


async def _notify(conn: AsyncConnection) -> None:
    await conn.execute(text(f"NOTIFY {CHANNEL}"))


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "order_id": row["order_id"],
        "sku": row["sku"],
        "template": row["template"],
        "recipient": row["recipient"],
        "subject": row["subject"],
        "status": row["status"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "server": row["server"],
        "message_id": row["message_id"],
        "correlation_id": row["correlation_id"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "next_attempt_at": iso(row["next_attempt_at"]) if row["status"] == "queued" else None,
        "sent_at": iso(row["sent_at"]),
    }
