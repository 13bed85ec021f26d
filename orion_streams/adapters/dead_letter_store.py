"""Dead letters in PostgreSQL: an index of the `dead-letters` topic (services/dead_letters.py
reads a record into a row), their replays and the audit trail of every replay call.

A replay holds the dead letter's row lock while it decides and sends, so two operators
replaying the same dead letter at once send it once: the second waits, then finds it
replayed. A replay whose process dies after the send and before the commit leaves the row
open; replaying it again sends it again, which the consuming agents take as a redelivery.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import func, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from ..services.dead_letters import Caller, Decide, Outcome, replayable
from . import schema as s
from .postgres import decode_cursor, encode_cursor, iso

d = s.dead_letters
r = s.dead_letter_replays
# How many replay calls a dead letter's view lists (the newest).
AUDIT_SHOWN = 20


class DeadLetterStore:
    """The dead_letters and dead_letter_replays tables."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def index(self, rows: Sequence[dict[str, Any]]) -> int:
        """Add rows read from the topic; a row indexed before is left as it is (a record
        read again after a rebalance). Returns how many were new."""
        if not rows:
            return 0
        stmt = pg_insert(d).values(list(rows)).on_conflict_do_nothing(index_elements=["id"]).returning(d.c.id)
        async with self.engine.begin() as conn:
            return len((await conn.execute(stmt)).all())

    async def page(self, *, status: str | None, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first; `status` open or replayed (None: both)."""
        query = select(d)
        if status is not None:
            query = query.where(d.c.status == status)
        if cursor:
            dead_at, key = decode_cursor(cursor)
            query = query.where(tuple_(d.c.dead_at, d.c.id) < tuple_(dead_at, key))
        query = query.order_by(d.c.dead_at.desc(), d.c.id.desc()).limit(limit + 1)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            page = rows[:limit]
            audits = await self._audits(conn, [row.id for row in page])
        items = [_view(row._mapping, audits.get(row.id, [])) for row in page]
        next_cursor = encode_cursor(page[-1].dead_at, page[-1].id) if len(rows) > limit else None
        return items, next_cursor

    async def get(self, id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(d).where(d.c.id == id))).first()
            if row is None:
                return None
            audits = await self._audits(conn, [id])
        return _view(row._mapping, audits.get(id, []))

    async def replays(self, id: str) -> list[dict[str, Any]]:
        """Every replay call of a dead letter, oldest first (the audit trail)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(r).where(r.c.dead_letter_id == id).order_by(r.c.id))).all()
        return [_audit_view(row._mapping) for row in rows]

    async def replay(self, id: str, caller: Caller, decide: Decide) -> Outcome:
        """Lock the dead letter, let `decide` answer (and send) and record the outcome; a
        call for an unknown id is answered and not recorded (there is nothing to refer to)."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(d).where(d.c.id == id).with_for_update())).first()
            outcome = await decide(cast(Mapping[str, Any], row._mapping) if row is not None else None)
            if row is None:
                return outcome
            if outcome.outcome == "replayed":
                await conn.execute(update(d).where(d.c.id == id).values(
                    status="replayed", replayed_at=func.now(), replayed_by=caller.actor[:300],
                    replay_partition=outcome.partition, replay_offset=outcome.offset,
                ))
            await conn.execute(insert(r).values(
                dead_letter_id=id, actor=caller.actor[:300], actor_roles=caller.roles, correlation_id=caller.correlation_id,
                outcome=outcome.outcome, detail=outcome.detail[:2000],
            ))
        return outcome

    async def _audits(self, conn: Any, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        if not ids:
            return {}
        # The newest AUDIT_SHOWN calls of each, in one query.
        ranked = select(r, func.row_number().over(partition_by=r.c.dead_letter_id, order_by=r.c.id.desc()).label("n")) \
            .where(r.c.dead_letter_id.in_(ids)).subquery()
        rows = (await conn.execute(select(ranked).where(ranked.c.n <= AUDIT_SHOWN).order_by(ranked.c.id))).all()
        out: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            out.setdefault(row.dead_letter_id, []).append(_audit_view(row._mapping))
        return out


def _audit_view(row: Any) -> dict[str, Any]:
    return {"at": iso(row["at"]), "actor": row["actor"], "actor_roles": row["actor_roles"],
            "correlation_id": row["correlation_id"], "outcome": row["outcome"], "detail": row["detail"]}


def _view(row: Any, replays: list[dict[str, Any]]) -> dict[str, Any]:
    never = replayable(row)
    return {
        "id": row["id"],
        "reason": row["reason"],
        "reason_class": row["reason_class"],
        "source_topic": row["source_topic"],
        "source_partition": row["source_partition"],
        "source_offset": row["source_offset"],
        "source_item": row["source_item"],
        "key": row["key"],
        "payload": row["payload"],
        "correlation_id": row["correlation_id"],
        "dead_at": iso(row["dead_at"]),
        "status": row["status"],
        "replayable": never is None and row["status"] == "open",
        "not_replayable_because": never,
        "replayed_at": iso(row["replayed_at"]),
        "replayed_by": row["replayed_by"],
        "replays": replays,
    }
