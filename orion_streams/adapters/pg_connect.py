"""How Orion connects to PostgreSQL, in one place: the store's engine, the mailer's LISTEN
connection and the migrations all take their URL and asyncpg arguments from `pg_params` (TLS
with libpq's sslmode meanings, the password kept out of the URL), and a first connection that
fails for a reason only the settings can fix stops the process with one line naming the
setting (`check_at_start`) instead of a stack trace or retries that never succeed."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg.exceptions as pg_errors
from sqlalchemy import pool, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import create_async_engine

from ..config import Settings

log = logging.getLogger("orion.postgres")

# One connection attempt, TLS and authentication included: a server that does not answer
# (a wrong port, a firewall dropping packets) fails the attempt instead of hanging it.
CONNECT_TIMEOUT = 10.0

URL_VAR = "ORION_DATABASE_URL"
PASSWORD_VAR = "ORION_DATABASE_PASSWORD"
SSLMODE_VAR = "ORION_DATABASE_SSLMODE"
ROOTCERT_VAR = "ORION_DATABASE_SSLROOTCERT"
CERT_VAR = "ORION_DATABASE_SSLCERT"
KEY_VAR = "ORION_DATABASE_SSLKEY"


class DatabaseSettingsError(ValueError):
    """Database settings that cannot work (together); the message names the variables."""


class DatabaseUnusable(RuntimeError):
    """PostgreSQL answered but refused us for a reason only the settings can fix (trust,
    certificates, TLS required, password, pg_hba.conf): retrying cannot help."""


class DatabaseUnreachable(RuntimeError):
    """PostgreSQL did not answer (down, wrong address, no answer in time): it may later."""


@dataclass(frozen=True)
class PgParams:
    """Where PostgreSQL is and how to connect: a SQLAlchemy URL (postgresql+asyncpg, with a
    password only if ORION_DATABASE_URL had one) and asyncpg.connect's keyword arguments
    (timeout, ssl, and the password from ORION_DATABASE_PASSWORD). Neither's text shows a
    password: URL hides it, and the arguments are not printed."""

    url: URL
    connect_args: dict[str, Any] = field(repr=False)
    # Which setting the password came from, for an error that says what to fix.
    password_from: str = f"the password in {URL_VAR}"
    # Whether TLS shows a client certificate (a server refusing it may just hang up).
    client_cert: bool = False

    @classmethod
    def from_url(cls, url: str | URL) -> PgParams:
        """A URL alone, as the dev stack and tests give one: the URL decides TLS."""
        return cls(make_url(url), {"timeout": CONNECT_TIMEOUT})

    @property
    def where(self) -> str:
        """host:port/database, for messages."""
        return f"{self.url.host or 'localhost'}:{self.url.port or 5432}/{self.url.database or ''}"


def pg_params(settings: Settings) -> PgParams:
    """PostgreSQL's URL and connection arguments from the settings; settings that cannot work
    together raise DatabaseSettingsError naming them."""
    try:
        url = make_url(settings.database_url)
    except ArgumentError:
        raise DatabaseSettingsError(f"{URL_VAR} is not a database URL (postgresql+asyncpg://...)") from None
    args: dict[str, Any] = {"timeout": CONNECT_TIMEOUT}
    password_from = f"the password in {URL_VAR}"
    if settings.database_password is not None:
        if url.password:
            raise DatabaseSettingsError(
                f"{URL_VAR} has a password and {PASSWORD_VAR} (or {PASSWORD_VAR}_FILE) is set: give it in one of them"
            )
        args["password"] = settings.database_password.get_secret_value()
        password_from = f"{PASSWORD_VAR} (or {PASSWORD_VAR}_FILE)"
    if settings.database_sslmode is not None:
        in_url = sorted({"ssl", "sslmode"} & set(url.query))
        if in_url:
            raise DatabaseSettingsError(f"{URL_VAR} sets {in_url[0]}= and {SSLMODE_VAR} is set: use one of them")
    ssl_arg = ssl_argument(
        settings.database_sslmode, settings.database_sslrootcert, settings.database_sslcert, settings.database_sslkey
    )
    if ssl_arg is not None:
        args["ssl"] = ssl_arg
    return PgParams(url, args, password_from, client_cert=settings.database_sslcert is not None)


def ssl_argument(
    sslmode: str | None, rootcert: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext | str | None:
    """asyncpg's `ssl` argument for a libpq sslmode: None leaves it to the URL; disable and
    prefer are asyncpg's own modes; require encrypts and checks no certificate; verify-ca checks
    the chain against `rootcert` (not the name); verify-full the chain and the host's name,
    against `rootcert` or else the system's CAs. The client certificate and key when given."""
    if key is not None and cert is None:
        raise DatabaseSettingsError(f"{KEY_VAR} is set without {CERT_VAR}")
    if sslmode is None:
        given = ROOTCERT_VAR if rootcert is not None else CERT_VAR if cert is not None else None
        if given:
            raise DatabaseSettingsError(f"{given} is set but {SSLMODE_VAR} is not: set it to verify-full")
        return None
    if rootcert is not None and sslmode not in ("verify-ca", "verify-full"):
        raise DatabaseSettingsError(
            f"{ROOTCERT_VAR} is used with {SSLMODE_VAR}=verify-ca or verify-full only ({sslmode} checks no certificate)"
        )
    if sslmode in ("disable", "prefer"):
        if cert is not None:
            raise DatabaseSettingsError(f"{CERT_VAR} needs {SSLMODE_VAR}=require, verify-ca or verify-full")
        return sslmode
    if sslmode == "verify-ca" and rootcert is None:
        # libpq alike: with the system's CAs, any certificate they signed for any name would do.
        raise DatabaseSettingsError(f"{SSLMODE_VAR}=verify-ca needs {ROOTCERT_VAR} (or use verify-full)")
    if sslmode not in ("require", "verify-ca", "verify-full"):
        raise DatabaseSettingsError(f"{SSLMODE_VAR} must be disable, prefer, require, verify-ca or verify-full")
    if sslmode == "require":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif rootcert is None:
        context = ssl.create_default_context()  # the system's CAs
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # the chain checked; these CAs only
        try:
            context.load_verify_locations(cafile=rootcert)
        except OSError as exc:  # ssl.SSLError too: no certificate in it
            raise DatabaseSettingsError(f"{ROOTCERT_VAR}: cannot use {rootcert}: {_reason(exc)}") from None
    context.check_hostname = sslmode == "verify-full"
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        try:
            context.load_cert_chain(cert, key)
        except OSError as exc:  # not PEM, or the key of another certificate
            named = f"{CERT_VAR} and {KEY_VAR}" if key is not None else CERT_VAR
            files = f"{cert} and {key}" if key is not None else str(cert)
            raise DatabaseSettingsError(f"{named}: cannot use {files}: {_reason(exc)}") from None
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The error and what caused it: SQLAlchemy wraps the driver's, which may wrap TLS's."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]


# The server went away or is not ready: down, starting, restarting, full.
_GONE = (
    pg_errors.ConnectionDoesNotExistError, pg_errors.CannotConnectNowError, pg_errors.TooManyConnectionsError,
    pg_errors.OperatorInterventionError,
)


def connect_problem(exc: BaseException, params: PgParams) -> DatabaseUnusable | DatabaseUnreachable | None:
    """What a failed connection means, in one line naming the setting to check (never the
    password); None for an error that is not about connecting."""
    errors = list(_chain(exc))
    at = f"PostgreSQL at {params.where}"

    def first(kind: type[BaseException] | tuple[type[BaseException], ...], saying: str = "") -> BaseException | None:
        return next((e for e in errors if isinstance(e, kind) and saying in str(e)), None)

    found: DatabaseUnusable | DatabaseUnreachable | None = None
    if (e := first(ssl.SSLCertVerificationError)) is not None:
        why = getattr(e, "verify_message", "") or _reason(e)
        if "mismatch" in why:
            found = DatabaseUnusable(
                f"{at}: its certificate is not for this host ({why}); connect by a name it has ({URL_VAR}), "
                f"or use {SSLMODE_VAR}=verify-ca"
            )
        else:
            found = DatabaseUnusable(
                f"{at}: its certificate is not trusted ({why}); check {ROOTCERT_VAR} (the CA that signed it)"
            )
    elif (e := first(ssl.SSLError)) is not None:
        found = DatabaseUnusable(
            f"{at}: the TLS handshake failed ({_reason(e)}); check {CERT_VAR} and {KEY_VAR} (the client "
            f"certificate) and {SSLMODE_VAR}"
        )
    elif (e := first(pg_errors.InvalidPasswordError)) is not None:
        found = DatabaseUnusable(f"{at}: {e}; check {params.password_from}")
    elif (e := first(pg_errors.InvalidAuthorizationSpecificationError, "certificate")) is not None:
        found = DatabaseUnusable(f"{at}: {e}; check {CERT_VAR} and {KEY_VAR} (and {SSLMODE_VAR})")
    elif (e := first(pg_errors.InvalidAuthorizationSpecificationError, "no encryption")) is not None:
        found = DatabaseUnusable(f"{at} requires TLS ({e}); set {SSLMODE_VAR} (verify-full)")
    elif (e := first(ConnectionError, "rejected SSL upgrade")) is not None:
        found = DatabaseUnusable(f"{at} does not offer TLS; check {SSLMODE_VAR} and the server's ssl setting")
    elif (e := first((pg_errors.InvalidAuthorizationSpecificationError, pg_errors.InvalidCatalogNameError))) is not None:
        found = DatabaseUnusable(f"{at}: {e}; check the user and database in {URL_VAR}")
    elif params.client_cert and first((pg_errors.ConnectionDoesNotExistError, ConnectionResetError)) is not None:
        # TLS 1.3: the server checks the client's certificate after the client's side of the
        # handshake; its alert may be lost when it hangs up, leaving just a closed connection.
        found = DatabaseUnusable(
            f"{at} hung up after the TLS handshake, as a server does with a client certificate it refuses "
            f"(expired, or from a CA it does not trust); check {CERT_VAR} and {KEY_VAR}"
        )
    elif (e := first(pg_errors.ClientConfigurationError)) is not None:
        found = DatabaseUnusable(f"{at}: {e}; check {SSLMODE_VAR} and {URL_VAR}")
    elif (e := first((OSError, *_GONE))) is not None:
        why = _reason(e) if str(e) else f"no answer within {CONNECT_TIMEOUT:.0f}s"
        found = DatabaseUnreachable(f"cannot reach {at} ({why}); check {URL_VAR}")
    return found


async def check_connection(params: PgParams) -> None:
    """Connect once as the store does; raise DatabaseUnusable or DatabaseUnreachable, with
    one line naming the setting, when that fails."""
    engine = create_async_engine(params.url, poolclass=pool.NullPool, connect_args=params.connect_args)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT + 5):  # asyncpg's own timeout, and a margin
            async with engine.connect() as conn:
                await conn.execute(text("select 1"))
    except Exception as exc:
        problem = connect_problem(exc, params)
        if problem is None:
            raise
        raise problem from None
    finally:
        await engine.dispose()


async def check_at_start(database: Settings | PgParams, *, must_connect: bool) -> PgParams:
    """A process's first connection: settings that cannot work stop it (SystemExit with one
    line); a server that does not answer stops it only when it `must_connect` now (migrations),
    otherwise it is logged and the process starts and retries as it always has."""
    try:
        params = database if isinstance(database, PgParams) else pg_params(database)
        await check_connection(params)
    except (DatabaseSettingsError, DatabaseUnusable) as exc:
        raise SystemExit(f"orion: {exc}") from None
    except DatabaseUnreachable as exc:
        if must_connect:
            raise SystemExit(f"orion: {exc}") from None
        log.warning("%s; starting anyway, retrying meanwhile", exc)
    return params


def check_at_start_sync(database: Settings | PgParams, *, must_connect: bool) -> PgParams:
    """`check_at_start` from synchronous code, on an event loop of its own that it closes (it
    leaves the thread's current loop alone, which the worker's Faust app takes later)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(check_at_start(database, must_connect=must_connect))
    finally:
        loop.close()
