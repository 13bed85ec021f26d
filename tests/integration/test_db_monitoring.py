"""Statement times, slow statements, errors and pool use, measured through SQLAlchemy events
on the real PostgreSQL server."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import exc, text

from orion_streams import logs
from orion_streams.adapters.db_monitoring import instrument
from orion_streams.adapters.postgres import SqlAlchemyStore

from .harness import Services

SECRET = "hunter2-should-not-appear"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Capture(logging.Handler):
    """Keeps the records `orion.db` emits, after the context filter, with their JSON lines."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.addFilter(logs.ContextFilter(worker_id="db-test"))
        self.setFormatter(logs.JsonFormatter())
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def db_log() -> Iterator[Capture]:
    logger = logging.getLogger("orion.db")
    handler = Capture()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
async def store(services: Services) -> AsyncIterator[SqlAlchemyStore]:
    store = SqlAlchemyStore(services.database_url, pool_size=2, slow_query_ms=20)
    try:
        # Connect once, so the connection's setup is not what the tests time.
        async with store.engine.connect() as conn:
            await conn.execute(text("select 1"))
        yield store
    finally:
        await store.close()


async def test_a_fast_statement_is_timed_and_not_logged(store: SqlAlchemyStore, db_log: Capture) -> None:
    before = sample("orion_db_query_duration_seconds_count", kind="select")
    slow_before = sample("orion_db_slow_queries_total", kind="select")
    async with store.engine.connect() as conn:
        assert (await conn.execute(text("select 1"))).scalar() == 1
    assert sample("orion_db_query_duration_seconds_count", kind="select") == before + 1
    assert sample("orion_db_slow_queries_total", kind="select") == slow_before
    assert db_log.records == []


async def test_a_slow_statement_is_logged_with_its_text_and_correlation_id_but_not_its_values(
    store: SqlAlchemyStore, db_log: Capture
) -> None:
    slow_before = sample("orion_db_slow_queries_total", kind="select")
    timed_before = sample("orion_db_query_duration_seconds_count", kind="select")
    with logs.bound(correlation_id="db-test-cid"):
        async with store.engine.connect() as conn:
            result = await conn.execute(text("select pg_sleep(0.05), :secret as s"), {"secret": SECRET})
            assert result.one().s == SECRET
    assert sample("orion_db_slow_queries_total", kind="select") == slow_before + 1
    assert sample("orion_db_query_duration_seconds_count", kind="select") == timed_before + 1
    assert sample("orion_db_query_duration_seconds_bucket", kind="select", le="0.025") is not None

    assert len(db_log.records) == 1, db_log.lines
    record = db_log.records[0]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert message.startswith("slow statement (")
    assert "select pg_sleep(0.05), $1 as s" in message  # the text, with its placeholder
    assert SECRET not in message
    assert record.__dict__["statement_kind"] == "select"
    assert record.__dict__["duration_ms"] >= 50
    assert record.__dict__["correlation_id"] == "db-test-cid"

    line = json.loads(db_log.lines[0])
    assert line["logger"] == "orion.db"
    assert line["level"] == "warning"
    assert line["correlation_id"] == "db-test-cid"
    assert line["statement_kind"] == "select"
    assert SECRET not in db_log.lines[0]


async def test_a_failed_statement_raises_its_own_error_and_is_counted(
    store: SqlAlchemyStore, db_log: Capture
) -> None:
    instrument(store.engine, slow_threshold_ms=20)  # a second time adds no listeners
    before = sample("orion_db_errors_total", kind="select")
    async with store.engine.connect() as conn:
        with pytest.raises(exc.ProgrammingError, match="no_such_table") as raised:
            await conn.execute(text("select * from no_such_table"))
        assert raised.value.orig is not None
        assert type(raised.value.orig.__cause__).__name__ == "UndefinedTableError"  # asyncpg's own
        await conn.rollback()
        # The connection is still usable and its next statement is not mistaken for an error.
        assert (await conn.execute(text("select 2"))).scalar() == 2
    assert sample("orion_db_errors_total", kind="select") == before + 1
    # The failed statement is counted as an error, never logged as a slow one (a busy box
    # may make "select 2" take the 20 ms that count as slow: that one may be logged).
    assert [r.getMessage() for r in db_log.records if "no_such_table" in r.getMessage()] == []


async def test_the_pool_gauges_follow_checkouts(store: SqlAlchemyStore) -> None:
    before = sample("orion_db_pool_connections_in_use")
    assert sample("orion_db_pool_size") >= 2
    async with store.engine.connect() as first:
        await first.execute(text("select 1"))
        assert sample("orion_db_pool_connections_in_use") == before + 1
        async with store.engine.connect() as second:
            await second.execute(text("select 1"))
            assert sample("orion_db_pool_connections_in_use") == before + 2
        assert sample("orion_db_pool_connections_in_use") == before + 1
    assert sample("orion_db_pool_connections_in_use") == before


async def test_an_invalidated_connection_is_counted_once(store: SqlAlchemyStore) -> None:
    pool = store.engine.sync_engine.pool
    before = sample("orion_db_pool_connections_in_use")
    async with store.engine.connect() as conn:
        await conn.execute(text("select 1"))
        assert sample("orion_db_pool_connections_in_use") == before + 1
        await conn.invalidate()  # the connection is closed and its slot handed back at once
        assert sample("orion_db_pool_connections_in_use") == before
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        await conn.rollback()
        assert (await conn.execute(text("select 1"))).scalar() == 1  # a new connection
        assert sample("orion_db_pool_connections_in_use") == before + 1
        assert pool.checkedout() == 1  # type: ignore[attr-defined]
    assert sample("orion_db_pool_connections_in_use") == before


async def test_a_disposed_engine_leaves_the_pool_size(services: Services) -> None:
    size_before = sample("orion_db_pool_size")
    store = SqlAlchemyStore(services.database_url, pool_size=3)
    try:
        assert sample("orion_db_pool_size") == size_before + 3
        async with store.engine.connect() as conn:
            await conn.execute(text("select 1"))
    finally:
        await store.close()
    assert sample("orion_db_pool_size") == size_before


async def test_a_failed_statements_message_leaves_its_values_out(store: SqlAlchemyStore) -> None:
    """The error text is what `until_done` and others log: parameters must not be in it."""
    async with store.engine.connect() as conn:
        with pytest.raises(exc.DBAPIError) as raised:
            await conn.execute(text("select * from no_such_table where x = :secret"), {"secret": SECRET})
        await conn.rollback()
    assert "no_such_table" in str(raised.value)
    assert SECRET not in str(raised.value) and SECRET not in repr(raised.value)


async def _terminate(store: SqlAlchemyStore, pid: int) -> None:
    async with store.engine.connect() as conn:
        assert (await conn.execute(text("select pg_terminate_backend(:pid)"), {"pid": pid})).scalar_one()


async def _backend(store: SqlAlchemyStore) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(text("select pg_backend_pid()"))).scalar_one())


async def test_a_connection_that_died_idle_in_the_pool_is_replaced_before_it_is_used(services: Services) -> None:
    store = SqlAlchemyStore(services.database_url, pool_size=1, idle_ping_after=0.0)
    other = SqlAlchemyStore(services.database_url, pool_size=1)
    try:
        pid = await _backend(store)
        await _terminate(other, pid)  # PostgreSQL restarted, a proxy dropped it
        assert await _backend(store) != pid  # checked at checkout, replaced: no error
    finally:
        await store.close()
        await other.close()


async def test_a_connection_used_a_moment_ago_is_not_checked_and_a_dead_one_fails_once(services: Services) -> None:
    store = SqlAlchemyStore(services.database_url, pool_size=1, idle_ping_after=3600.0)
    other = SqlAlchemyStore(services.database_url, pool_size=1)
    try:
        pid = await _backend(store)
        await _terminate(other, pid)
        with pytest.raises(exc.DBAPIError) as failed:  # no round trip spent checking it
            await _backend(store)
        assert failed.value.connection_invalidated
        assert await _backend(store) != pid  # the pool let it go: the next use reconnects
    finally:
        await store.close()
        await other.close()
