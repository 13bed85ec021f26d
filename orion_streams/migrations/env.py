"""Alembic environment: runs migrations over the async engine Orion uses, connected as the
store is (pg_params: TLS and the password too)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from orion_streams.adapters.pg_connect import PgParams, pg_params
from orion_streams.adapters.schema import metadata
from orion_streams.config import Settings

config = context.config
target_metadata = metadata


def database() -> PgParams:
    """What `orion migrate` checked and passed; Alembic run by hand reads the same ORION_*
    settings."""
    given = config.attributes.get("pg_params")
    return given if isinstance(given, PgParams) else pg_params(Settings.from_env())


def run_migrations_offline() -> None:
    context.configure(url=database().url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    params = database()
    engine = create_async_engine(params.url, poolclass=pool.NullPool, connect_args=params.connect_args)
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_async_migrations())
