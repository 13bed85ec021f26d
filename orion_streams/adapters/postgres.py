"""PostgreSQL access with SQLAlchemy 2 on asyncpg: the projection writer and the read side."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg.exceptions as pg_errors
import orjson
from sqlalchemy import event, select, text, tuple_
from sqlalchemy import exc as sa_errors
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .. import records
from ..config import Settings
from ..domain.catalog import Product
from ..domain.events import (
    AdjustmentRejected,
    AuditEntry,
    OrderStatusChanged,
    StockAdjusted,
    StockLevelChanged,
)
from ..services.ports import Accepted
from . import schema as s
from .db_monitoring import instrument
from .pg_connect import CONNECT_TIMEOUT, pg_params

log = logging.getLogger("orion.postgres")


def jsonb_text(data: Mapping[str, Any]) -> str:
    """A mapping as JSON text for a jsonb column; orjson, an eighth of the stdlib's time on the
    projection's path (its output differs only in spacing and escapes, which jsonb drops)."""
    return orjson.dumps(dict(data), option=orjson.OPT_NON_STR_KEYS).decode()


def parse_time(value: str | datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def iso(value: datetime | None) -> str | None:
    return None if value is None else records.utc_iso(value)


# One prepared statement whatever the number of orders (arrays, not a VALUES list per row).
# An order the projection wrote already keeps its row and gains the key (so a retry finds
# the order), also when the projection's row commits while this statement runs: ON CONFLICT
# DO UPDATE waits for that row and updates it, where an update of the statement's own
# snapshot would miss it and the key would be lost. The lines' foreign key is checked at the
# end of the statement.
_RECORD_ACCEPTED = text(
    "with t as (select * from unnest(cast(:order_ids as text[]), cast(:user_ids as text[]), "
    "cast(:emails as text[]), cast(:totals as bigint[]), cast(:currencies as text[]), cast(:keys as text[]), "
    "cast(:hashes as text[]), cast(:ats as timestamptz[])) "
    "as t(order_id, user_id, email, total, currency, key, hash, at)), "
    "l as (insert into order_lines (order_id, sku, quantity, unit_price) select * from unnest("
    "cast(:line_orders as text[]), cast(:line_skus as text[]), cast(:line_quantities as integer[]), "
    "cast(:line_prices as bigint[])) on conflict do nothing) "
    "insert into orders (order_id, user_id, email, status, total, currency, version, idempotency_key, "
    "request_hash, created_at, updated_at) "
    "select order_id, user_id, email, 'PENDING', total, currency, 0, key, hash, at, at from t "
    "on conflict (order_id) do update set idempotency_key = excluded.idempotency_key, "
    "request_hash = excluded.request_hash "
    "where orders.idempotency_key is null and excluded.idempotency_key is not null"
)


_UNREACHABLE = (
    OSError,
    TimeoutError,
    sa_errors.TimeoutError,  # no pooled connection came free in time
    sa_errors.OperationalError,
    sa_errors.InterfaceError,
    pg_errors.OperatorInterventionError,  # shutting down, starting up, crashed
    pg_errors.PostgresConnectionError,
    pg_errors.TooManyConnectionsError,
    pg_errors.InterfaceError,  # the connection is gone
)


def database_unavailable(exc: BaseException) -> bool:
    """Whether an error means PostgreSQL could not be reached (down, restarting, no free
    connection) rather than that it refused a statement: the first is worth a retry."""
    seen: BaseException | None = exc
    for _ in range(5):  # SQLAlchemy wraps the driver's error, which may wrap a socket's
        if seen is None:
            return False
        if isinstance(seen, _UNREACHABLE) or (isinstance(seen, sa_errors.DBAPIError) and seen.connection_invalidated):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


@dataclass(frozen=True)
class AuditContext:
    """Who caused an audit entry and under which correlation id."""

    correlation_id: str | None
    actor: str | None
    actor_roles: str | None = None


class InvalidCursor(ValueError):
    """A paging cursor that this server did not issue."""


def encode_cursor(created_at: datetime, key: str) -> str:
    raw = json.dumps([created_at.isoformat(), key]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, key = json.loads(base64.urlsafe_b64decode(padded))
        when = datetime.fromisoformat(created)
        if when.tzinfo is None or not 1970 <= when.astimezone(UTC).year <= 9000 or "\x00" in str(key):
            raise ValueError("out of range")
        return when, str(key)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidCursor("cursor is not valid") from exc


# The projection's statements: one prepared statement each whatever the batch size, its rows
# passed as one array per column (unnest), where an executemany bound every row in Python.
_ORDERS_UPSERT = text(
    "insert into orders (order_id, user_id, email, status, total, currency, failure_reason, version, "
    "created_at, updated_at) select * from unnest(cast(:order_ids as text[]), cast(:user_ids as text[]), "
    "cast(:emails as text[]), cast(:statuses as text[]), cast(:totals as bigint[]), cast(:currencies as text[]), "
    "cast(:reasons as text[]), cast(:versions as integer[]), cast(:created as timestamptz[]), "
    "cast(:updated as timestamptz[])) on conflict (order_id) do update set status = excluded.status, "
    "total = excluded.total, failure_reason = excluded.failure_reason, version = excluded.version, "
    "updated_at = excluded.updated_at where orders.version < excluded.version"
)
_LINES_INSERT = text(
    "insert into order_lines (order_id, sku, quantity, unit_price) select * from unnest("
    "cast(:order_ids as text[]), cast(:skus as text[]), cast(:quantities as integer[]), "
    "cast(:prices as bigint[])) on conflict do nothing"
)
_AUDIT_INSERT = text(
    "insert into order_events (order_id, seq, type, at, data, correlation_id, actor, actor_roles) "
    "select order_id, seq, type, at, data::jsonb, correlation_id, actor, actor_roles from unnest("
    "cast(:order_ids as text[]), cast(:seqs as integer[]), cast(:types as text[]), cast(:ats as timestamptz[]), "
    "cast(:data as text[]), cast(:correlation_ids as text[]), cast(:actors as text[]), cast(:roles as text[])) "
    "as t(order_id, seq, type, at, data, correlation_id, actor, actor_roles) on conflict do nothing"
)
_LEVELS_UPSERT = text(
    "insert into stock_levels (sku, on_hand, reserved, low_stock_threshold, version, updated_at) "
    "select * from unnest(cast(:skus as text[]), cast(:on_hand as bigint[]), cast(:reserved as bigint[]), "
    "cast(:thresholds as bigint[]), cast(:versions as bigint[]), cast(:updated as timestamptz[])) "
    "on conflict (sku) do update set on_hand = excluded.on_hand, reserved = excluded.reserved, "
    "low_stock_threshold = excluded.low_stock_threshold, version = excluded.version, "
    "updated_at = excluded.updated_at where stock_levels.version < excluded.version"
)
_ADJUSTMENTS_INSERT = insert(s.stock_adjustments).on_conflict_do_nothing()
_IN_FLIGHT = text("select count(*) from orders where status in ('PENDING', 'RESERVED')")
_QUEUE_HEAD = text(
    "select created_at from orders where status in ('PENDING', 'RESERVED') order by created_at offset :skip limit 1"
)


# A pooled connection left idle this long is checked before it is used again (PostgreSQL
# restarted, a proxy dropped it). SQLAlchemy's pool_pre_ping checks at every checkout, three
# round trips with asyncpg (BEGIN, ";", ROLLBACK): under load the largest cost of a write.
# A connection that breaks while in use fails its statement, which invalidates the pool.
IDLE_PING_AFTER = 5.0
_IDLE_SINCE = "orion_idle_since"  # where a pooled connection's record keeps its checkin time


def ping_when_idle(engine: AsyncEngine, after: float) -> None:
    """Check a connection at checkout only when it sat in the pool `after` seconds or more;
    a dead one is replaced (the pool retries the checkout with a new connection)."""
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def checked_in(dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < after:
            return  # new, or used a moment ago
        try:
            dbapi_connection.ping()
        except Exception as exc:
            raise sa_errors.DisconnectionError(f"pooled connection is gone: {type(exc).__name__}") from exc


class SqlAlchemyStore:
    """Orion's system of record. Writes are idempotent: replays add nothing."""

    def __init__(
        self, url: str | URL, *, pool_size: int = 10, slow_query_ms: float = 200.0,
        idle_ping_after: float = IDLE_PING_AFTER, connect_args: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size,
            # Errors are logged: their text must not carry the values (emails, payloads).
            hide_parameters=True,
            # asyncpg's: TLS, the password when not in the URL; a connect timeout in any case.
            connect_args={"timeout": CONNECT_TIMEOUT, **(connect_args or {})},
        )
        ping_when_idle(self.engine, idle_ping_after)
        # One statement needs no transaction: autocommit sends just it, one round trip instead
        # of three with BEGIN and COMMIT or ROLLBACK (reads at read committed lose nothing).
        self._single = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        # Statement times, slow statements (logged without parameters), errors, pool use.
        instrument(self.engine, slow_threshold_ms=slow_query_ms)

    @classmethod
    def from_settings(cls, settings: Settings, *, pool_size: int | None = None) -> SqlAlchemyStore:
        """The store a process's settings name: their database, TLS and password (pg_params),
        their pool size unless given and slow-statement threshold."""
        params = pg_params(settings)
        return cls(
            params.url, connect_args=params.connect_args, slow_query_ms=settings.db_slow_query_ms,
            pool_size=settings.db_pool_size if pool_size is None else pool_size,
        )

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> None:
        async with self._single.connect() as conn:
            await conn.execute(text("select 1"))

    # -- catalog ---------------------------------------------------------------------

    async def upsert_products(self, products: Iterable[Product]) -> None:
        rows = [
            {"sku": p.sku, "name": p.name, "unit_price": p.unit_price, "currency": p.currency, "active": p.active,
             "category": p.category}
            for p in products
        ]
        if not rows:
            return
        stmt = insert(s.products).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=["sku"],
            set_={c: stmt.excluded[c] for c in ("name", "unit_price", "currency", "active", "category")},
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

    async def products(self) -> list[Product]:
        async with self._single.connect() as conn:
            rows = (await conn.execute(select(s.products).order_by(s.products.c.sku))).all()
        return [Product(r.sku, r.name, r.unit_price, r.currency, r.active, r.category) for r in rows]

    # -- the write side used by the HTTP API ----------------------------------------

    async def record_accepted(self, orders: Sequence[Accepted]) -> None:
        """Make orders readable right after their 202, in one prepared statement; the
        projection takes them from there. An order the projection wrote first keeps its row;
        only its idempotency key is added."""
        unique = list({o.order_id: o for o in reversed(orders)}.values())  # the first of each
        lines = [(o.order_id, sku, q, p) for o in unique for sku, q, p in o.lines]
        params = {
            "order_ids": [o.order_id for o in unique], "user_ids": [o.user_id for o in unique],
            "emails": [o.email for o in unique], "totals": [sum(q * p for _, q, p in o.lines) for o in unique],
            "currencies": [o.currency for o in unique], "keys": [o.idempotency_key for o in unique],
            "hashes": [o.request_hash for o in unique], "ats": [o.created_at for o in unique],
            "line_orders": [x[0] for x in lines], "line_skus": [x[1] for x in lines],
            "line_quantities": [x[2] for x in lines], "line_prices": [x[3] for x in lines],
        }
        async with self._single.connect() as conn:  # one statement: atomic on its own
            await conn.execute(_RECORD_ACCEPTED, params)

    async def order_started(self, order_id: str) -> bool:
        """Whether the saga ever started this order (the projection wrote a status of it;
        the HTTP API's own early row has version 0)."""
        async with self._single.connect() as conn:
            row = (
                await conn.execute(
                    select(s.orders.c.version).where(s.orders.c.order_id == order_id, s.orders.c.version > 0)
                )
            ).first()
        return row is not None

    async def orders_in_flight(self, skip: int) -> tuple[int, datetime | None]:
        """How many orders are undecided (PENDING or RESERVED), and when the order at
        position `skip` of them, oldest first, was accepted.
        Both read the partial index of undecided orders: the cost follows what is in flight."""
        async with self._single.connect() as conn:
            count = (await conn.execute(_IN_FLIGHT)).scalar_one()
            head = (await conn.execute(_QUEUE_HEAD, {"skip": skip})).scalar_one_or_none()
        return int(count), head

    async def find_by_idempotency_key(self, user_id: str, key: str) -> dict[str, Any] | None:
        async with self._single.connect() as conn:
            row = (
                await conn.execute(
                    select(s.orders.c.order_id, s.orders.c.request_hash).where(
                        s.orders.c.user_id == user_id, s.orders.c.idempotency_key == key
                    )
                )
            ).first()
        return dict(row._mapping) if row else None

    # -- the projection --------------------------------------------------------------

    async def project(
        self,
        statuses: Sequence[OrderStatusChanged],
        audit: Sequence[tuple[AuditEntry, AuditContext]],
        levels: Sequence[StockLevelChanged],
        adjustments: Sequence[StockAdjusted | AdjustmentRejected],
    ) -> None:
        """Write one batch in one transaction. Newer versions win; replays are no-ops."""
        async with self.engine.begin() as conn:
            await self.project_in(conn, statuses, audit, levels, adjustments)

    async def project_in(
        self,
        conn: AsyncConnection,
        statuses: Sequence[OrderStatusChanged],
        audit: Sequence[tuple[AuditEntry, AuditContext]],
        levels: Sequence[StockLevelChanged],
        adjustments: Sequence[StockAdjusted | AdjustmentRejected],
    ) -> None:
        """`project` within a transaction the caller holds (the projection adds its emails)."""
        if statuses:
            await self._project_orders(conn, statuses)
        if audit:
            entries = list({(a.order_id, a.seq): (a, ctx) for a, ctx in audit}.values())
            await conn.execute(_AUDIT_INSERT, {
                "order_ids": [a.order_id for a, _ in entries], "seqs": [a.seq for a, _ in entries],
                "types": [a.kind for a, _ in entries], "ats": [parse_time(a.at) for a, _ in entries],
                "data": [jsonb_text(a.data) for a, _ in entries],
                "correlation_ids": [ctx.correlation_id for _, ctx in entries],
                "actors": [ctx.actor for _, ctx in entries], "roles": [ctx.actor_roles for _, ctx in entries],
            })
        if levels:
            await self._project_levels(conn, levels)
        if adjustments:
            await self._project_adjustments(conn, adjustments)

    async def _project_orders(self, conn: AsyncConnection, statuses: Sequence[OrderStatusChanged]) -> None:
        latest: dict[str, OrderStatusChanged] = {}
        for ev in statuses:
            if ev.order_id not in latest or latest[ev.order_id].version < ev.version:
                latest[ev.order_id] = ev
        orders = list(latest.values())
        await conn.execute(_ORDERS_UPSERT, {
            "order_ids": [ev.order_id for ev in orders], "user_ids": [ev.user_id for ev in orders],
            "emails": [ev.email for ev in orders], "statuses": [ev.status.value for ev in orders],
            "totals": [ev.total for ev in orders], "currencies": [ev.currency for ev in orders],
            "reasons": [ev.failure_reason for ev in orders], "versions": [ev.version for ev in orders],
            "created": [parse_time(ev.created_at) for ev in orders], "updated": [parse_time(ev.at) for ev in orders],
        })
        lines = [(ev.order_id, line) for ev in orders for line in ev.lines]
        if lines:
            await conn.execute(_LINES_INSERT, {
                "order_ids": [o for o, _ in lines], "skus": [line.sku for _, line in lines],
                "quantities": [line.quantity for _, line in lines], "prices": [line.unit_price for _, line in lines],
            })

    async def _project_levels(self, conn: AsyncConnection, levels: Sequence[StockLevelChanged]) -> None:
        latest: dict[str, StockLevelChanged] = {}
        for ev in levels:
            if ev.sku not in latest or latest[ev.sku].version < ev.version:
                latest[ev.sku] = ev
        rows = list(latest.values())
        await conn.execute(_LEVELS_UPSERT, {
            "skus": [ev.sku for ev in rows], "on_hand": [ev.on_hand for ev in rows],
            "reserved": [ev.reserved for ev in rows], "thresholds": [ev.low_stock_threshold for ev in rows],
            "versions": [ev.version for ev in rows], "updated": [parse_time(ev.at) for ev in rows],
        })

    async def _project_adjustments(
        self, conn: AsyncConnection, adjustments: Sequence[StockAdjusted | AdjustmentRejected]
    ) -> None:
        rows = []
        for adj in {a.adjustment_id: a for a in adjustments}.values():
            if isinstance(adj, StockAdjusted):
                rows.append({"adjustment_id": adj.adjustment_id, "sku": adj.sku, "delta": adj.delta,
                             "reason": adj.reason, "status": "applied", "detail": None})
            else:
                rows.append({"adjustment_id": adj.adjustment_id, "sku": adj.sku, "delta": 0,
                             "reason": "", "status": "rejected", "detail": adj.reason})
        await conn.execute(_ADJUSTMENTS_INSERT, rows)

    # -- reads ------------------------------------------------------------------------

    async def get_order(self, order_id: str) -> dict[str, Any] | None:
        async with self._single.connect() as conn:
            row = (await conn.execute(select(s.orders).where(s.orders.c.order_id == order_id))).first()
            if row is None:
                return None
            lines = (
                await conn.execute(
                    select(s.order_lines).where(s.order_lines.c.order_id == order_id).order_by(s.order_lines.c.sku)
                )
            ).all()
        return _order_view(row._mapping, [dict(line._mapping) for line in lines])

    async def order_status(self, order_id: str) -> str | None:
        async with self._single.connect() as conn:
            return (
                await conn.execute(select(s.orders.c.status).where(s.orders.c.order_id == order_id))
            ).scalar_one_or_none()

    async def list_orders(
        self, *, user_id: str | None, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        o = s.orders
        query = select(o)
        if user_id is not None:
            query = query.where(o.c.user_id == user_id)
        if status is not None:
            query = query.where(o.c.status == status)
        if cursor:
            created, key = decode_cursor(cursor)
            query = query.where(tuple_(o.c.created_at, o.c.order_id) < tuple_(created, key))
        query = query.order_by(o.c.created_at.desc(), o.c.order_id.desc()).limit(limit + 1)
        async with self._single.connect() as conn:
            rows = (await conn.execute(query)).all()
            page = rows[:limit]
            ids = [r.order_id for r in page]
            lines = (
                (await conn.execute(select(s.order_lines).where(s.order_lines.c.order_id.in_(ids)))).all()
                if ids
                else []
            )
        by_order: dict[str, list[dict[str, Any]]] = {}
        for line in sorted(lines, key=lambda r: r.sku):
            by_order.setdefault(line.order_id, []).append(dict(line._mapping))
        items = [_order_view(r._mapping, by_order.get(r.order_id, [])) for r in page]
        next_cursor = encode_cursor(page[-1].created_at, page[-1].order_id) if len(rows) > limit else None
        return items, next_cursor

    async def order_events(self, order_id: str) -> list[dict[str, Any]]:
        e = s.order_events
        async with self._single.connect() as conn:
            rows = (await conn.execute(select(e).where(e.c.order_id == order_id).order_by(e.c.seq))).all()
        return [
            {"seq": r.seq, "type": r.type, "at": iso(r.at), "data": r.data,
             "correlation_id": r.correlation_id, "actor": r.actor,
             "actor_roles": r.actor_roles.split(",") if r.actor_roles else []}
            for r in rows
        ]

    async def get_product(self, sku: str) -> dict[str, Any] | None:
        async with self._single.connect() as conn:
            row = (await conn.execute(select(s.products).where(s.products.c.sku == sku))).first()
        return _product_view(row._mapping) if row else None

    async def list_products(self) -> list[dict[str, Any]]:
        async with self._single.connect() as conn:
            rows = (await conn.execute(select(s.products).order_by(s.products.c.sku))).all()
        return [_product_view(r._mapping) for r in rows]

    async def get_stock(self, sku: str) -> dict[str, Any] | None:
        async with self._single.connect() as conn:
            row = (await conn.execute(select(s.stock_levels).where(s.stock_levels.c.sku == sku))).first()
        return _stock_view(row._mapping) if row else None

    async def list_stock(self, *, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        t = s.stock_levels
        query = select(t).order_by(t.c.sku).limit(limit + 1)
        if cursor:
            _, after = decode_cursor(cursor)
            query = query.where(t.c.sku > after)
        async with self._single.connect() as conn:
            rows = (await conn.execute(query)).all()
        page = rows[:limit]
        next_cursor = encode_cursor(datetime.now(UTC), page[-1].sku) if len(rows) > limit else None
        return [_stock_view(r._mapping) for r in page], next_cursor

    async def adjustment(self, adjustment_id: str) -> dict[str, Any] | None:
        a = s.stock_adjustments
        async with self._single.connect() as conn:
            row = (await conn.execute(select(a).where(a.c.adjustment_id == adjustment_id))).first()
        return dict(row._mapping) if row else None


def _order_view(row: Any, lines: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "order_id": row["order_id"],
        "user_id": row["user_id"],
        "status": row["status"],
        "lines": [
            {"sku": line["sku"], "quantity": line["quantity"], "unit_price": line["unit_price"],
             "line_total": line["quantity"] * line["unit_price"]}
            for line in lines
        ],
        "total": row["total"],
        "currency": row["currency"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "failure_reason": row["failure_reason"],
    }


def _product_view(row: Any) -> dict[str, Any]:
    return {"sku": row["sku"], "name": row["name"], "unit_price": row["unit_price"],
            "currency": row["currency"], "active": row["active"], "category": row["category"]}


def _stock_view(row: Any) -> dict[str, Any]:
    available = row["on_hand"] - row["reserved"]
    return {"sku": row["sku"], "on_hand": row["on_hand"], "reserved": row["reserved"],
            "available": available, "low_stock_threshold": row["low_stock_threshold"],
            "low_stock": available <= row["low_stock_threshold"]}

