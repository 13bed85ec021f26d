"""Watch what the database does through SQLAlchemy events: statement times, slow statements,
failures and how many pooled connections are in use.

`instrument(engine, slow_threshold_ms=...)` attaches the listeners once per engine:

- every statement's time goes to `orion_db_query_duration_seconds{kind}` (kind: select, insert,
  update, delete or other). An executemany is one observation; each batch of an "insertmanyvalues"
  INSERT is one round trip and one observation. Failed statements are counted in
  `orion_db_errors_total{kind}`, not timed;
- a statement slower than the threshold counts in `orion_db_slow_queries_total{kind}` and is logged
  at WARNING on `orion.db` with its text shortened; never its parameter values. The logging filter
  adds the correlation id bound by the code that ran it (context variables reach SQLAlchemy's
  greenlet);
- `orion_db_pool_connections_in_use` and `orion_db_pool_size` are this process's totals over every
  instrumented engine that is alive and not disposed.

What the events do not see: the pool's checks of idle connections (adapters/postgres.py),
asyncpg's own BEGIN/COMMIT/ROLLBACK (the driver calls them directly) and asyncpg's type
introspection on connect. asyncpg prepares each new statement on a
connection; that first round trip is included in the statement's time.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, Pool

from .. import metrics, tracing

log = logging.getLogger("orion.db")

KINDS = ("select", "insert", "update", "delete", "other")
STATEMENT_LOG_CHARS = 500

# Where a statement's start time is kept: on its execution context, or on the connection's info
# (a stack, for nested statements) in the rare executions that have no context.
_STARTED_ATTR = "_orion_started"
_STARTED_STACK = "orion_statement_starts"
_SPAN_ATTR = "_orion_span"  # the statement's tracing span, when tracing is on

# Comments, string literals, parentheses and words; enough to find the statement under a WITH.
_TOKENS = re.compile(
    r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?(tag)(?P=tag))\$"
    r"|(?P<open>\()|(?P<close>\))|(?P<word>[A-Za-z_]\w*)",
    re.S,
)
# The first keyword, after any comments and opening parentheses.
_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/|\()*(?P<word>[A-Za-z_]+)", re.S)
_DML = frozenset(("select", "insert", "update", "delete"))


def statement_kind(statement: str | None) -> str:
    """`select`, `insert`, `update`, `delete` or `other` (LISTEN, BEGIN, DDL, ...).

    `WITH ... SELECT` is a select: the kind of a WITH is that of the statement after its common
    table expressions (a data-modifying CTE does not change it).
    """
    if not statement:
        return "other"
    if len(statement) <= _CACHED_CHARS:
        return _cached_kind(statement)
    return _kind(statement)


# The application's statements are a few hundred fixed texts (bound parameters, no literals):
# each is classified once, not on every execution (1 % of the worker's samples, py-spy).
_CACHED_CHARS = 8192


@functools.lru_cache(maxsize=512)
def _cached_kind(statement: str) -> str:
    return _kind(statement)


def _kind(statement: str) -> str:
    match = _FIRST_WORD.match(statement)
    if match is None:
        return "other"
    word = match["word"].lower()
    if word in _DML:
        return word
    if word == "values" or word == "table":
        return "select"
    if word != "with":
        return "other"
    depth = 0
    for token in _TOKENS.finditer(statement, match.end()):
        if token["open"]:
            depth += 1
        elif token["close"]:
            depth = max(depth - 1, 0)
        elif depth == 0 and token["word"] and token["word"].lower() in _DML:
            return token["word"].lower()
    return "other"


def shorten(statement: str, limit: int = STATEMENT_LOG_CHARS) -> str:
    """The statement on one line (runs of whitespace collapsed), cut to about `limit` characters."""
    # Collapse only the part that can be shown: an INSERT of many rows can be megabytes long.
    head = statement[: limit * 4]
    text = " ".join(head.split())
    if len(text) > limit or len(head) < len(statement):
        return text[:limit].rstrip() + " ..."
    return text


# -- statement events ----------------------------------------------------------------------


def _end_span(context: ExecutionContext | None, error: BaseException | None = None) -> None:
    current = getattr(context, _SPAN_ATTR, None) if context is not None else None
    if current is not None:
        setattr(context, _SPAN_ATTR, None)
        tracing.finish(current, error)


def _start(conn: Connection, context: ExecutionContext | None) -> None:
    now = time.perf_counter()
    if context is not None:
        setattr(context, _STARTED_ATTR, now)
    else:
        conn.info.setdefault(_STARTED_STACK, []).append(now)


def _stop(conn: Connection | None, context: ExecutionContext | None) -> float | None:
    """Seconds since the statement started, forgetting its start; None if it was not seen."""
    now = time.perf_counter()
    started: float | None = None
    if context is not None:
        started = getattr(context, _STARTED_ATTR, None)
        if started is not None:
            setattr(context, _STARTED_ATTR, None)
    elif conn is not None:
        stack = conn.info.get(_STARTED_STACK)
        if stack:
            started = stack.pop()
    return None if started is None else now - started


@dataclass
class _Statements:
    slow_threshold_ms: float

    def before(
        self, conn: Connection, cursor: Any, statement: str, parameters: Any,
        context: ExecutionContext | None, executemany: bool,
    ) -> None:
        _start(conn, context)
        if context is not None and tracing.enabled():
            kind = statement_kind(statement)
            setattr(context, _SPAN_ATTR, tracing.start(
                f"db {kind}", "client", attributes={"db.system.name": "postgresql", "db.query.text": shorten(statement)}
            ))

    def after(
        self, conn: Connection, cursor: Any, statement: str, parameters: Any,
        context: ExecutionContext | None, executemany: bool,
    ) -> None:
        try:
            _end_span(context)
            seconds = _stop(conn, context)
            if seconds is None:
                return
            kind = statement_kind(statement)
            metrics.labelled(metrics.DB_QUERY, kind).observe(seconds)
            ms = seconds * 1000.0
            if ms > self.slow_threshold_ms:
                metrics.DB_SLOW.labels(kind).inc()
                log.warning(
                    "slow statement (%d ms): %s", round(ms), shorten(statement),
                    extra={"duration_ms": round(ms, 1), "statement_kind": kind},
                )
        except Exception:  # watching must never fail a statement that worked
            log.debug("could not record a statement", exc_info=True)

    def failed(self, ctx: ExceptionContext) -> None:
        try:
            _end_span(ctx.execution_context, ctx.original_exception)
            _stop(ctx.connection, ctx.execution_context)
            # A failed pre-ping is the pool replacing a stale connection, not a failure; a
            # cancellation (BaseException) is the caller giving up, not the database failing.
            if ctx.is_pre_ping or not isinstance(ctx.original_exception, Exception):
                return
            metrics.DB_ERRORS.labels(statement_kind(ctx.statement)).inc()
        except Exception:  # the original error must reach the caller unchanged
            log.debug("could not record a failed statement", exc_info=True)


# -- the pool ------------------------------------------------------------------------------


@dataclass(eq=False)
class _PoolWatch:
    """The connections one engine has checked out, as the pool events tell them."""

    engine: weakref.ref[Engine]
    checked_out: weakref.WeakSet[ConnectionPoolEntry] = field(default_factory=weakref.WeakSet)
    active: bool = True

    def in_use(self) -> int:
        if self.engine() is None:
            return 0
        # A record whose connection went back without a checkin event (it cannot, but cheap to
        # be sure) no longer counts.
        for record in [r for r in self.checked_out if not r.in_use]:
            self.checked_out.discard(record)
        return len(self.checked_out)

    def pool_size(self) -> int:
        engine = self.engine()
        if engine is None or not self.active:
            return 0
        return _pool_size(engine.pool)

    def checkout(self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        self.active = True
        self.checked_out.add(record)
        _refresh()

    def returned(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # checkin (also of an invalidated connection) and detach (leaves the pool for good)
        self.checked_out.discard(record)
        _refresh()

    def disposed(self, engine: Engine) -> None:
        # The engine got a new, empty pool; connections still out belonged to the old one.
        self.active = False
        self.checked_out.clear()
        _refresh()


def _pool_size(pool: Pool) -> int:
    size = getattr(pool, "size", None)
    return int(size()) if callable(size) else 0


# Every instrumented engine of this process; an engine leaves when it is garbage collected.
_watched: weakref.WeakKeyDictionary[Engine, _PoolWatch] = weakref.WeakKeyDictionary()


def _refresh() -> None:
    try:
        watches = list(_watched.values())
        metrics.DB_POOL_IN_USE.set(sum(w.in_use() for w in watches))
        metrics.DB_POOL_SIZE.set(sum(w.pool_size() for w in watches))
    except Exception:  # watching must never fail a checkout
        log.debug("could not update the pool gauges", exc_info=True)


def instrument(engine: AsyncEngine, *, slow_threshold_ms: float) -> None:
    """Time, count and log the statements of `engine` and watch its pool (once per engine)."""
    sync = engine.sync_engine
    if sync in _watched:
        return
    statements = _Statements(slow_threshold_ms)
    event.listen(sync, "before_cursor_execute", statements.before)
    event.listen(sync, "after_cursor_execute", statements.after)
    event.listen(sync, "handle_error", statements.failed)

    watch = _PoolWatch(weakref.ref(sync))
    event.listen(sync, "checkout", watch.checkout)
    event.listen(sync, "checkin", watch.returned)
    event.listen(sync, "detach", watch.returned)
    event.listen(sync, "engine_disposed", watch.disposed)
    _watched[sync] = watch
    # An engine dropped without dispose() leaves the totals when it is collected.
    weakref.finalize(sync, _refresh).atexit = False
    _refresh()
