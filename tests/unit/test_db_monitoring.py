"""Statement kinds and the statement text that a slow-statement log line shows."""

from __future__ import annotations

import pytest

from orion_streams.adapters.db_monitoring import STATEMENT_LOG_CHARS, shorten, statement_kind


@pytest.mark.parametrize(
    ("statement", "kind"),
    [
        ("select 1", "select"),
        ("SELECT orders.order_id FROM orders WHERE orders.user_id = $1", "select"),
        ("\n   Select\t1", "select"),
        ("INSERT INTO orders (order_id) VALUES ($1) ON CONFLICT DO NOTHING", "insert"),
        ("update orders set status = $1", "update"),
        ("DELETE FROM stock WHERE sku = $1", "delete"),
        ("(SELECT 1) UNION (SELECT 2)", "select"),
        ("-- which orders\nselect 1", "select"),
        ("/* orion */ INSERT INTO t VALUES (1)", "insert"),
        ("VALUES (1), (2)", "select"),
        # WITH takes the kind of the statement after its common table expressions.
        ("WITH recent AS (SELECT * FROM orders) SELECT count(*) FROM recent", "select"),
        ("with a(x) as (select 1), b as (select (2)) insert into t select x from a", "insert"),
        ("WITH gone AS (DELETE FROM t RETURNING id) SELECT count(*) FROM gone", "select"),
        ("WITH x AS (SELECT ')insert(' AS s) UPDATE t SET s = (SELECT s FROM x)", "update"),
        ('WITH "select" AS (SELECT 1) DELETE FROM t', "delete"),
        ("WITH x AS (SELECT $$ ) insert $$ AS s) SELECT * FROM x", "select"),
        ("WITH broken AS (", "other"),
        ("LISTEN orion_orders", "other"),
        ("NOTIFY orion_orders, 'x'", "other"),
        ("BEGIN", "other"),
        ("COMMIT", "other"),
        ("CREATE TABLE t (id int)", "other"),
        ("selected_things", "other"),
        ("", "other"),
        ("   ", "other"),
        (None, "other"),
    ],
)
def test_statement_kind(statement: str | None, kind: str) -> None:
    assert statement_kind(statement) == kind


def test_shorten_puts_a_statement_on_one_line() -> None:
    assert shorten("SELECT a,\n       b\n\tFROM   t\r\n WHERE x = $1 ") == "SELECT a, b FROM t WHERE x = $1"


def test_shorten_keeps_a_short_statement_whole() -> None:
    statement = "select " + "x" * (STATEMENT_LOG_CHARS - 7)
    assert len(statement) == STATEMENT_LOG_CHARS
    assert shorten(statement) == statement


def test_shorten_cuts_a_long_statement_and_says_so() -> None:
    statement = "INSERT INTO t (a) VALUES " + ", ".join(["($1)"] * 10_000)
    short = shorten(statement)
    assert short.startswith("INSERT INTO t (a) VALUES ($1), ($1)")
    assert short.endswith(" ...")
    assert len(short) <= STATEMENT_LOG_CHARS + 4


def test_shorten_marks_a_cut_hidden_by_whitespace() -> None:
    # Whitespace collapsed away does not hide that the statement went on.
    statement = "select 1" + " " * (STATEMENT_LOG_CHARS * 5) + "from t"
    assert shorten(statement) == "select 1 ..."


def test_shorten_takes_a_limit() -> None:
    assert shorten("select   a, b, c from t", limit=10) == "select a, ..."


# --- telling "PostgreSQL is away" from "PostgreSQL refused it" ----------------------------


def test_database_unavailable_tells_unreachable_from_refused() -> None:
    import asyncpg.exceptions as pg
    from sqlalchemy import exc as sa

    from orion_streams.adapters.postgres import database_unavailable

    def wrapped(orig: BaseException, cls: type[sa.DBAPIError] = sa.DBAPIError, invalidated: bool = False) -> BaseException:
        return cls("select 1", {}, orig, connection_invalidated=invalidated)

    away = [
        ConnectionRefusedError(111, "Connect call failed"),
        TimeoutError(),
        sa.TimeoutError("QueuePool limit reached"),
        wrapped(ConnectionRefusedError(111, "refused"), sa.OperationalError),
        wrapped(pg.AdminShutdownError("terminating connection due to administrator command")),
        wrapped(pg.CannotConnectNowError("the database system is starting up")),
        wrapped(Exception("connection was closed in the middle of operation"), invalidated=True),
    ]
    refused = [
        wrapped(pg.UniqueViolationError("duplicate key"), sa.IntegrityError),
        wrapped(pg.UndefinedTableError("no such table")),
        ValueError("a bug"),
    ]
    assert [database_unavailable(e) for e in away] == [True] * len(away)
    assert [database_unavailable(e) for e in refused] == [False] * len(refused)
