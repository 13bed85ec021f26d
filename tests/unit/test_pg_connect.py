"""How Orion connects to PostgreSQL (adapters/pg_connect.py), with no database: sslmode's
libpq meanings shown by TLS handshakes with a local server, the password rules, settings that
cannot work together, and the one line a failed first connection turns into."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg.exceptions as pg_errors
import pytest
from sqlalchemy import event
from sqlalchemy import exc as sa_errors

from orion_devstack.certs import Certs, make_certs
from orion_devstack.ports import free_port
from orion_streams.adapters.pg_connect import (
    CONNECT_TIMEOUT,
    DatabaseSettingsError,
    DatabaseUnreachable,
    DatabaseUnusable,
    PgParams,
    check_at_start,
    check_connection,
    connect_problem,
    pg_params,
    ssl_argument,
)
from orion_streams.adapters.postgres import SqlAlchemyStore
from orion_streams.config import Settings

URL = "postgresql+asyncpg://orion@db.example:5432/orion"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """Certificates whose server certificate is for db.example only, not 127.0.0.1."""
    return make_certs(tmp_path_factory.mktemp("elsewhere"), hosts=("db.example",))


def settings(**given: Any) -> Settings:
    fields = {"database_url": URL, "database_password": None, "database_sslmode": None, "database_sslrootcert": None,
              "database_sslcert": None, "database_sslkey": None}
    return Settings(**{**fields, **given})


Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def _listening(serve: Serve) -> AsyncIterator[int]:
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@contextlib.asynccontextmanager
async def _tls_server(certs: Certs, *, client_certs: bool = False) -> AsyncIterator[int]:
    """A TLS server saying "hello" once the handshake is done; with `client_certs`, only to
    clients whose certificate its CA signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
    context.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    context.verify_mode = ssl.CERT_REQUIRED if client_certs else ssl.CERT_NONE

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(context)
            writer.write(b"hello")
            await writer.drain()
        except (ssl.SSLError, ConnectionError):
            pass  # the client refused us, or we it
        finally:
            writer.close()

    async with _listening(serve) as port:
        yield port


async def _hello(port: int, context: ssl.SSLContext | str | None) -> bytes:
    """What the server says after the handshake (b"" when it hung up on us)."""
    assert isinstance(context, ssl.SSLContext)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"), 10)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except (ssl.SSLError, ConnectionError):
        return b""  # TLS 1.3: a refused client certificate shows after the handshake
    finally:
        writer.close()


# -- sslmode -----------------------------------------------------------------------------


def test_without_sslmode_the_url_decides_tls_and_a_connect_timeout_is_set() -> None:
    params = pg_params(settings(database_url=URL + "?ssl=require"))
    assert "ssl" not in params.connect_args and params.url.query == {"ssl": "require"}
    assert params.connect_args["timeout"] == CONNECT_TIMEOUT


@pytest.mark.parametrize("mode", ["disable", "prefer"])
def test_disable_and_prefer_are_asyncpgs_own_modes(mode: str) -> None:
    assert pg_params(settings(database_sslmode=mode)).connect_args["ssl"] == mode


async def test_require_encrypts_and_checks_no_certificate(certs: Certs) -> None:
    context = pg_params(settings(database_sslmode="require")).connect_args["ssl"]
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    async with _tls_server(certs) as port:  # a CA the client was told nothing of
        assert await _hello(port, context) == b"hello"


async def test_verify_ca_checks_the_chain_but_not_the_name(elsewhere: Certs, certs: Certs) -> None:
    trusting = ssl_argument("verify-ca", elsewhere.ca)
    async with _tls_server(elsewhere) as port:  # for db.example, reached as 127.0.0.1
        assert await _hello(port, trusting) == b"hello"
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            await _hello(port, ssl_argument("verify-ca", certs.ca))  # another CA's


async def test_verify_full_checks_the_chain_and_the_name(elsewhere: Certs, certs: Certs) -> None:
    async with _tls_server(elsewhere) as port:
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            await _hello(port, ssl_argument("verify-full", elsewhere.ca))
    async with _tls_server(certs) as port:
        assert await _hello(port, ssl_argument("verify-full", certs.ca)) == b"hello"
        with pytest.raises(ssl.SSLCertVerificationError):
            await _hello(port, ssl_argument("verify-full", certs.other_ca))


async def test_the_client_certificate_is_shown_when_given(certs: Certs) -> None:
    async with _tls_server(certs, client_certs=True) as port:
        assert await _hello(port, ssl_argument("verify-full", certs.ca, certs.client_cert, certs.client_key)) == b"hello"
        assert await _hello(port, ssl_argument("verify-full", certs.ca)) == b""


def test_verify_full_without_a_root_certificate_trusts_the_systems_cas() -> None:
    context = ssl_argument("verify-full")
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(("given", "named"), [
    ({"database_sslrootcert": Path("ca.pem")}, "ORION_DATABASE_SSLROOTCERT is set but ORION_DATABASE_SSLMODE is not"),
    ({"database_sslcert": Path("c.pem")}, "ORION_DATABASE_SSLCERT is set but ORION_DATABASE_SSLMODE is not"),
    ({"database_sslmode": "require", "database_sslrootcert": Path("ca.pem")},
     "ORION_DATABASE_SSLROOTCERT is used with ORION_DATABASE_SSLMODE=verify-ca or verify-full only"),
    ({"database_sslmode": "prefer", "database_sslcert": Path("c.pem")},
     "ORION_DATABASE_SSLCERT needs ORION_DATABASE_SSLMODE=require, verify-ca or verify-full"),
    ({"database_sslmode": "verify-full", "database_sslkey": Path("k.pem")},
     "ORION_DATABASE_SSLKEY is set without ORION_DATABASE_SSLCERT"),
    ({"database_sslmode": "verify-ca"}, "ORION_DATABASE_SSLMODE=verify-ca needs ORION_DATABASE_SSLROOTCERT"),
    ({"database_sslmode": "require", "database_url": URL + "?ssl=disable"},
     "ORION_DATABASE_URL sets ssl= and ORION_DATABASE_SSLMODE is set"),
])
def test_settings_that_cannot_work_together_are_refused_by_name(given: dict[str, Any], named: str) -> None:
    with pytest.raises(DatabaseSettingsError, match=named.replace("?", r"\?")):
        pg_params(settings(**given))


def test_certificate_files_that_cannot_be_used_are_named(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(DatabaseSettingsError, match="ORION_DATABASE_SSLROOTCERT: cannot use .*missing.pem"):
        ssl_argument("verify-full", tmp_path / "missing.pem")
    with pytest.raises(DatabaseSettingsError, match="ORION_DATABASE_SSLCERT and ORION_DATABASE_SSLKEY: cannot use"):
        ssl_argument("verify-full", certs.ca, certs.client_cert, certs.server_key)  # another certificate's key


# -- the password --------------------------------------------------------------------------


def test_the_password_setting_is_used_when_the_url_has_none() -> None:
    params = pg_params(settings(database_password="s3cret-from-file"))
    assert params.connect_args["password"] == "s3cret-from-file" and params.url.password is None
    assert "ORION_DATABASE_PASSWORD" in params.password_from
    assert "s3cret-from-file" not in repr(params) + str(params.url)


def test_a_password_in_the_url_is_kept_and_never_shown() -> None:
    params = pg_params(settings(database_url="postgresql+asyncpg://orion:in-the-url@db.example/orion"))
    assert params.url.password == "in-the-url" and "password" not in params.connect_args
    assert params.password_from == "the password in ORION_DATABASE_URL"
    assert "in-the-url" not in repr(params) + str(params.url) + params.where


def test_a_password_both_in_the_url_and_set_is_refused_naming_both() -> None:
    with pytest.raises(DatabaseSettingsError, match="ORION_DATABASE_URL has a password and ORION_DATABASE_PASSWORD"):
        pg_params(settings(database_url="postgresql+asyncpg://orion:pw@db.example/orion", database_password="pw2"))


class _Stop(Exception):
    pass


async def test_the_store_connects_with_the_settings_tls_and_password(certs: Certs) -> None:
    store = SqlAlchemyStore.from_settings(
        settings(database_password="pw", database_sslmode="verify-full", database_sslrootcert=certs.ca), pool_size=1)
    asked: dict[str, Any] = {}

    @event.listens_for(store.engine.sync_engine, "do_connect")
    def connecting(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        asked.update(cparams)
        raise _Stop  # what asyncpg.connect would be given is all this test wants

    try:
        with pytest.raises(_Stop):
            await store.ping()
    finally:
        await store.close()
    assert asked["host"] == "db.example" and asked["password"] == "pw" and asked["timeout"] == CONNECT_TIMEOUT
    assert isinstance(asked["ssl"], ssl.SSLContext) and asked["ssl"].check_hostname


# -- what a failed first connection says ----------------------------------------------------


def _wrapped(error: BaseException) -> BaseException:
    """The error as SQLAlchemy raises it: wrapped, the driver's as the cause."""
    outer = sa_errors.OperationalError("select 1", None, RuntimeError("adapter"))
    outer.orig.__cause__ = error  # type: ignore[union-attr]
    return outer


def _verify_error(message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_message = message
    return error


@pytest.mark.parametrize(("error", "kind", "says"), [
    (_verify_error("unable to get local issuer certificate"), DatabaseUnusable, "not trusted .*ORION_DATABASE_SSLROOTCERT"),
    (_verify_error("IP address mismatch, certificate is not valid for '10.0.0.1'."), DatabaseUnusable,
     "not for this host .*ORION_DATABASE_URL.*verify-ca"),
    (pg_errors.InvalidPasswordError('password authentication failed for user "orion"'), DatabaseUnusable,
     "password authentication failed .*check ORION_DATABASE_PASSWORD"),
    (pg_errors.InvalidAuthorizationSpecificationError(
        'pg_hba.conf rejects connection for host "127.0.0.1", user "orion", database "orion", no encryption'),
     DatabaseUnusable, "requires TLS .*ORION_DATABASE_SSLMODE"),
    (pg_errors.InvalidAuthorizationSpecificationError("connection requires a valid client certificate"),
     DatabaseUnusable, "ORION_DATABASE_SSLCERT and ORION_DATABASE_SSLKEY"),
    (ConnectionRefusedError(111, "Connect call failed"), DatabaseUnreachable, "cannot reach .*ORION_DATABASE_URL"),
    (TimeoutError(), DatabaseUnreachable, f"no answer within {CONNECT_TIMEOUT:.0f}s"),
])
def test_a_failed_connection_says_which_setting_to_check(error: BaseException, kind: type, says: str) -> None:
    params = pg_params(settings(database_password="hunter2-secret"))
    problem = connect_problem(_wrapped(error), params)
    assert isinstance(problem, kind)
    assert "\n" not in str(problem) and "hunter2-secret" not in str(problem)
    assert "PostgreSQL at db.example:5432/orion" in str(problem)
    assert re.search(says, str(problem)), str(problem)


def test_a_hang_up_after_the_handshake_is_the_client_certificate_only_when_one_is_shown(certs: Certs) -> None:
    closed = pg_errors.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    shown = pg_params(settings(database_sslmode="verify-full", database_sslrootcert=certs.ca,
                               database_sslcert=certs.client_cert, database_sslkey=certs.client_key))
    assert isinstance(connect_problem(closed, shown), DatabaseUnusable)
    assert "ORION_DATABASE_SSLCERT" in str(connect_problem(closed, shown))
    assert isinstance(connect_problem(closed, pg_params(settings())), DatabaseUnreachable)


def test_an_error_that_is_not_about_connecting_is_left_alone() -> None:
    assert connect_problem(pg_errors.UndefinedTableError('relation "x" does not exist'), pg_params(settings())) is None


# -- against a stand-in that answers PostgreSQL's TLS request -------------------------------


@contextlib.asynccontextmanager
async def _answering(answer: bytes, certs: Certs | None = None) -> AsyncIterator[int]:
    """A server that answers asyncpg's SSLRequest with `answer` (b"S": TLS follows, with the
    certificates' server certificate; b"N": no TLS here), then hangs up."""
    context = None
    if certs is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(certs.server_cert), str(certs.server_key))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readexactly(8)  # SSLRequest
            writer.write(answer)
            await writer.drain()
            if context is not None:
                await writer.start_tls(context)
                await reader.read(1)
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async with _listening(serve) as port:
        yield port


async def test_a_server_with_another_ca_stops_the_first_connection_naming_the_root_certificate(certs: Certs) -> None:
    async with _answering(b"S", certs) as port:
        params = pg_params(settings(database_url=f"postgresql+asyncpg://orion:pw@127.0.0.1:{port}/orion",
                                    database_sslmode="verify-full", database_sslrootcert=certs.other_ca))
        with pytest.raises(DatabaseUnusable, match="not trusted .* check ORION_DATABASE_SSLROOTCERT"):
            await asyncio.wait_for(check_connection(params), 5)


async def test_a_server_without_tls_stops_the_first_connection_naming_sslmode() -> None:
    async with _answering(b"N") as port:
        url = f"postgresql+asyncpg://orion:pw@127.0.0.1:{port}/orion"
        with pytest.raises(SystemExit) as stopped:
            await check_at_start(settings(database_url=url, database_sslmode="require"), must_connect=False)
        assert str(stopped.value.code) == f"orion: PostgreSQL at 127.0.0.1:{port}/orion does not offer TLS; " \
            "check ORION_DATABASE_SSLMODE and the server's ssl setting"


async def test_an_unreachable_server_stops_only_what_must_connect_now(caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql+asyncpg://orion:pw@127.0.0.1:{free_port()}/orion"
    with pytest.raises(SystemExit, match="orion: cannot reach PostgreSQL at .* check ORION_DATABASE_URL"):
        await check_at_start(PgParams.from_url(url), must_connect=True)
    with caplog.at_level(logging.WARNING, "orion.postgres"):
        params = await check_at_start(settings(database_url=url), must_connect=False)
    assert params.url.port == int(url.rsplit(":", 1)[1].split("/")[0])
    assert "starting anyway" in caplog.text


async def test_settings_that_cannot_work_stop_the_start_in_one_line() -> None:
    with pytest.raises(SystemExit, match="^orion: ORION_DATABASE_SSLMODE=verify-ca needs ORION_DATABASE_SSLROOTCERT"):
        await check_at_start(settings(database_sslmode="verify-ca"), must_connect=False)
