"""PostgreSQL that accepts TLS only (the dev stack's, certificates made on the fly):
`orion migrate` and the store connect with verify-full and the CA, the password read from
ORION_DATABASE_PASSWORD_FILE; a wrong CA, a client without TLS, an expired client certificate
and a wrong password each stop `orion migrate` (and the worker and the mailer, before Kafka)
within seconds with one line naming the setting, never the password, having written nothing."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from orion_devstack import LocalPostgres, free_port
from orion_devstack.certs import Certs, make_certs
from orion_streams.adapters.pg_connect import CONNECT_TIMEOUT
from orion_streams.adapters.postgres import SqlAlchemyStore
from orion_streams.config import Settings
from orion_streams.domain.catalog import Product

PASSWORD = "tls-test-Pa55word"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("pg-certs"))


def _server(root: Path, certs: Certs, *, client_certs: bool) -> Iterator[LocalPostgres]:
    from orion_devstack._common import DevServiceError
    from orion_devstack.postgres import tls_pg_bin_dir

    try:
        tls_pg_bin_dir()
    except DevServiceError as exc:  # a machine without a PostgreSQL built with OpenSSL
        pytest.skip(str(exc))
    server = LocalPostgres(root, port=free_port(), password=PASSWORD, tls=certs, client_certs=client_certs)
    try:
        server.start(timeout=60)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_only(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[LocalPostgres]:
    """Refuses connections without TLS."""
    yield from _server(tmp_path_factory.mktemp("pg-tls"), certs, client_certs=False)


@pytest.fixture(scope="module")
def client_certs_only(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[LocalPostgres]:
    """Refuses connections without TLS and a client certificate its CA signed for the user."""
    yield from _server(tmp_path_factory.mktemp("pg-mtls"), certs, client_certs=True)


def _trusting(certs: Certs) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


async def _admin(server: LocalPostgres, certs: Certs, database: str = "orion") -> Any:
    return await asyncpg.connect(host=server.host, port=server.port, user=server.user, password=PASSWORD,
                                 database=database, ssl=_trusting(certs), timeout=10)


def new_database(server: LocalPostgres, certs: Certs) -> str:
    """An empty database of its own for one test, so "nothing written" can be checked."""
    name = f"t_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await _admin(server, certs)
        try:
            await conn.execute(f'create database "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return name


def tables(server: LocalPostgres, certs: Certs, database: str) -> list[str]:
    async def read() -> list[str]:
        conn = await _admin(server, certs, database)
        try:
            return [r[0] for r in await conn.fetch("select tablename from pg_tables where schemaname = 'public'")]
        finally:
            await conn.close()

    return asyncio.run(read())


def orion_env(server: LocalPostgres, certs: Certs, database: str, tmp_path: Path, **changes: str | None) -> dict[str, str]:
    """ORION_* for verify-full with the CA, the password in a file; `changes` set or (None)
    remove variables, named without their ORION_DATABASE_ prefix."""
    secret = tmp_path / "db-password"
    secret.write_text(PASSWORD + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORION_", "PG"))}
    database_env: dict[str, str | None] = {
        "URL": f"postgresql+asyncpg://{server.user}@{server.host}:{server.port}/{database}",
        "PASSWORD_FILE": str(secret), "SSLMODE": "verify-full", "SSLROOTCERT": str(certs.ca),
        **changes,
    }
    env |= {f"ORION_DATABASE_{k}": v for k, v in database_env.items() if v is not None}
    # The worker and the mailer would go on to Kafka and SMTP: nothing listens there.
    env |= {"ORION_STATE_DIR": str(tmp_path / "state"), "ORION_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "ORION_LOG_FORMAT": "json"}
    return env


def orion(command: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "orion_streams.cli", command], env=env, capture_output=True,
                          text=True, timeout=60)
    return done, time.monotonic() - started


def assert_stopped_clearly(done: subprocess.CompletedProcess[str], took: float, *says: str) -> str:
    """Exit 1 within seconds, the last line of stderr naming the cause, no traceback, no
    password."""
    said = done.stderr.strip().splitlines()
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert took < CONNECT_TIMEOUT, f"took {took:.1f}s: waited for a timeout instead of failing at once"
    assert "Traceback" not in done.stderr and said and said[-1].startswith("orion: PostgreSQL at "), done.stderr
    for part in says:
        assert part in said[-1], said[-1]
    assert PASSWORD not in done.stdout + done.stderr
    return said[-1]


def test_migrate_and_the_store_work_with_verify_full_and_the_password_from_a_file(
    tls_only: LocalPostgres, certs: Certs, tmp_path: Path
) -> None:
    database = new_database(tls_only, certs)
    env = orion_env(tls_only, certs, database, tmp_path)
    done, _ = orion("migrate", env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"alembic_version", "orders", "products"} <= set(tables(tls_only, certs, database))

    settings = Settings(
        database_url=env["ORION_DATABASE_URL"], database_password=PASSWORD, database_sslmode="verify-full",
        database_sslrootcert=certs.ca,
    )

    async def use() -> tuple[list[Product], bool]:
        store = SqlAlchemyStore.from_settings(settings, pool_size=1)
        try:
            await store.upsert_products([Product("TLS-1", "Over TLS", 1_000)])
            async with store.engine.connect() as conn:
                encrypted = (await conn.execute(text("select ssl from pg_stat_ssl where pid = pg_backend_pid()"))).scalar()
            return await store.products(), bool(encrypted)
        finally:
            await store.close()

    products, encrypted = asyncio.run(use())
    assert [p.sku for p in products] == ["TLS-1"] and encrypted


@pytest.mark.parametrize("command", ["migrate", "worker", "mailer"])
def test_a_wrong_ca_stops_the_process_naming_the_root_certificate(
    tls_only: LocalPostgres, certs: Certs, tmp_path: Path, command: str
) -> None:
    database = new_database(tls_only, certs)
    done, took = orion(command, orion_env(tls_only, certs, database, tmp_path, SSLROOTCERT=str(certs.other_ca)))
    assert_stopped_clearly(done, took, "certificate is not trusted", "ORION_DATABASE_SSLROOTCERT")
    assert tables(tls_only, certs, database) == []


def test_a_client_without_tls_is_refused_naming_sslmode(tls_only: LocalPostgres, certs: Certs, tmp_path: Path) -> None:
    database = new_database(tls_only, certs)
    env = orion_env(tls_only, certs, database, tmp_path, SSLMODE="disable", SSLROOTCERT=None)
    done, took = orion("migrate", env)
    assert_stopped_clearly(done, took, "requires TLS", "no encryption", "ORION_DATABASE_SSLMODE")
    assert tables(tls_only, certs, database) == []


def test_an_expired_client_certificate_is_refused_naming_it(
    client_certs_only: LocalPostgres, certs: Certs, tmp_path: Path
) -> None:
    database = new_database(client_certs_only, certs)
    valid = {"SSLCERT": str(certs.client_cert), "SSLKEY": str(certs.client_key)}
    done, _ = orion("migrate", orion_env(client_certs_only, certs, database, tmp_path, **valid))
    assert done.returncode == 0, done.stderr[-2000:]  # the same server takes the valid one

    database = new_database(client_certs_only, certs)
    expired = {"SSLCERT": str(certs.expired_client_cert), "SSLKEY": str(certs.expired_client_key)}
    done, took = orion("migrate", orion_env(client_certs_only, certs, database, tmp_path, **expired))
    # TLS 1.3: the server's "certificate expired" alert may be lost as it hangs up.
    said = assert_stopped_clearly(done, took, "ORION_DATABASE_SSLCERT and ORION_DATABASE_SSLKEY")
    assert "CERTIFICATE_EXPIRED" in said or "client certificate it refuses" in said
    assert tables(client_certs_only, certs, database) == []


def test_a_wrong_password_is_refused_without_showing_it(tls_only: LocalPostgres, certs: Certs, tmp_path: Path) -> None:
    database = new_database(tls_only, certs)
    wrong = "not-the-Pa55word-" + uuid.uuid4().hex
    env = orion_env(tls_only, certs, database, tmp_path, PASSWORD_FILE=None, PASSWORD=wrong)
    done, took = orion("migrate", env)
    assert_stopped_clearly(done, took, "password authentication failed", "ORION_DATABASE_PASSWORD")
    assert wrong not in done.stdout + done.stderr
    assert tables(tls_only, certs, database) == []
