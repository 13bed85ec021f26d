"""How every Kafka client of Orion's connects: one reading of the ORION_KAFKA_* security
settings, as aiokafka's keyword arguments (admin clients, the projection, the live feed,
the mailer, the CLI, the benchmarks) and as Faust's broker credentials (the worker's
consumer and producers), so no client can be left on plaintext by accident.

A setting that cannot work (a CA file that is not there, a key that does not match its
certificate, SASL without a user) is refused here with the variable's name, before any
connection is tried."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka.abc import AbstractTokenProvider

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

    from ..config import Settings

TLS = frozenset({"SSL", "SASL_SSL"})
SASL = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
# How long a token command may take before the client gives up on it.
TOKEN_COMMAND_TIMEOUT = 30.0


class KafkaSecurityError(ValueError):
    """A Kafka security setting that cannot work; the message names the variable."""


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL (None otherwise): the broker's certificate is
    checked against ORION_KAFKA_SSL_CAFILE (the system's CAs when unset) and, unless
    ORION_KAFKA_SSL_CHECK_HOSTNAME is false, issued to the host connected to."""
    if settings.kafka_security_protocol not in TLS:
        _unused(settings, "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "kafka_ssl_key_password")
        return None
    cafile = settings.kafka_ssl_cafile
    try:
        context = ssl.create_default_context(cafile=str(cafile) if cafile is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise KafkaSecurityError(f"ORION_KAFKA_SSL_CAFILE: cannot use {cafile}: {_reason(exc)}") from None
    context.check_hostname = settings.kafka_ssl_check_hostname
    certfile, keyfile = settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile
    if keyfile is not None and certfile is None:
        raise KafkaSecurityError("ORION_KAFKA_SSL_KEYFILE is set without ORION_KAFKA_SSL_CERTFILE")
    if certfile is not None:
        password = settings.kafka_ssl_key_password
        try:
            context.load_cert_chain(
                str(certfile), str(keyfile) if keyfile is not None else None,
                password.get_secret_value() if password is not None else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise KafkaSecurityError(
                f"ORION_KAFKA_SSL_CERTFILE / ORION_KAFKA_SSL_KEYFILE: cannot use {certfile}"
                f"{f' with {keyfile}' if keyfile else ''}: {_reason(exc)}"
            ) from None
    return context


class TokenFromFile(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka is untyped
    """OAUTHBEARER: the token is whatever the file holds when the client asks (a sidecar or
    the platform keeps it fresh)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def token(self) -> str:
        try:
            text = await asyncio.to_thread(self.path.read_text)
        except OSError as exc:
            raise KafkaSecurityError(f"ORION_KAFKA_OAUTH_TOKEN_FILE: cannot read {self.path}: {exc.strerror}") from None
        token = text.strip()
        if not token:
            raise KafkaSecurityError(f"ORION_KAFKA_OAUTH_TOKEN_FILE: {self.path} is empty")
        return token


class TokenFromCommand(AbstractTokenProvider):  # type: ignore[misc]
    """OAUTHBEARER: the token is what the command prints, run each time the client asks."""

    def __init__(self, command: str) -> None:
        self.command = command

    async def token(self) -> str:
        process = await asyncio.create_subprocess_shell(
            self.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(process.communicate(), TOKEN_COMMAND_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise KafkaSecurityError(
                f"ORION_KAFKA_OAUTH_TOKEN_COMMAND took longer than {TOKEN_COMMAND_TIMEOUT:.0f}s") from None
        token = out.decode().strip()
        if process.returncode != 0 or not token:
            said = err.decode(errors="replace").strip()[-300:]
            raise KafkaSecurityError(
                f"ORION_KAFKA_OAUTH_TOKEN_COMMAND failed (exit {process.returncode})"
                f"{f': {said}' if said else ': it printed no token'}"
            )
        return token


def _token_provider(settings: Settings) -> AbstractTokenProvider:
    path, command = settings.kafka_oauth_token_file, settings.kafka_oauth_token_command
    if (path is None) == (command is None):
        raise KafkaSecurityError(
            "ORION_KAFKA_SASL_MECHANISM=OAUTHBEARER needs one of ORION_KAFKA_OAUTH_TOKEN_FILE "
            "or ORION_KAFKA_OAUTH_TOKEN_COMMAND")
    return TokenFromFile(path) if path is not None else TokenFromCommand(str(command))


def _sasl(settings: Settings) -> dict[str, Any]:
    if settings.kafka_security_protocol not in SASL:
        _unused(settings, "kafka_sasl_username", "kafka_sasl_password", "kafka_oauth_token_file",
                "kafka_oauth_token_command")
        return {}
    mechanism = settings.kafka_sasl_mechanism
    if mechanism == "OAUTHBEARER":
        _unused(settings, "kafka_sasl_username", "kafka_sasl_password")
        return {"sasl_mechanism": mechanism, "sasl_oauth_token_provider": _token_provider(settings)}
    _unused(settings, "kafka_oauth_token_file", "kafka_oauth_token_command")
    if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
        raise KafkaSecurityError(
            f"ORION_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} with {mechanism} needs "
            "ORION_KAFKA_SASL_USERNAME and ORION_KAFKA_SASL_PASSWORD (or ORION_KAFKA_SASL_PASSWORD_FILE)")
    return {
        "sasl_mechanism": mechanism,
        "sasl_plain_username": settings.kafka_sasl_username,
        "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
    }


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka's keyword arguments for a client that connects as the settings say."""
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    options.update(_sasl(settings))
    return options


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """The worker's broker credentials for Faust (None: plaintext)."""
    from faust.auth import OAuthCredentials, SASLCredentials, SSLCredentials

    options = client_options(settings)
    protocol, context = options["security_protocol"], options.get("ssl_context")
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return SSLCredentials(context)
    if options["sasl_mechanism"] == "OAUTHBEARER":
        return OAuthCredentials(oauth_cb=options["sasl_oauth_token_provider"], ssl_context=context)
    return SASLCredentials(
        username=options["sasl_plain_username"], password=options["sasl_plain_password"],
        ssl_context=context, mechanism=options["sasl_mechanism"])


def _unused(settings: Settings, *names: str) -> None:
    """A security setting that the chosen protocol would silently ignore is a mistake."""
    given = [f"ORION_{name.upper()}" for name in names if getattr(settings, name) is not None]
    if given:
        raise KafkaSecurityError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} set but "
            f"ORION_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} does not use "
            f"{'it' if len(given) == 1 else 'them'}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return getattr(exc, "reason", None) or str(exc)


# How long start-up waits for the broker's first answer before it calls the settings wrong.
CHECK_TIMEOUT = 15.0
# How long it listens for the broker's verdict on a client certificate.
CLIENT_CERT_VERDICT = 1.0


async def check_connection(settings: Settings, timeout: float = CHECK_TIMEOUT) -> None:
    """Connect to the first broker once, as the settings say, and turn what can only be a
    wrong setting into KafkaSecurityError naming it: a certificate the CA does not vouch
    for, a broker that does not speak TLS (or speaks only TLS), a user or password the
    broker refuses, a SASL mechanism it does not offer. A broker that is merely down
    (connection refused) is left to the clients' own retries."""
    from aiokafka.conn import create_conn
    from aiokafka.errors import (
        KafkaConnectionError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )
    from aiokafka.protocol.admin import ApiVersionRequest

    options = client_options(settings)
    host, _, port = settings.kafka_bootstrap.split(",")[0].strip().rpartition(":")
    where = f"{host}:{port}"
    protocol = settings.kafka_security_protocol
    context = options.get("ssl_context")
    if context is not None:
        await _check_tls(context, host, int(port), where, timeout, client_cert=settings.kafka_ssl_certfile is not None)
    mismatch = (f"is ORION_KAFKA_SECURITY_PROTOCOL={protocol} what its listener expects "
                f"(and ORION_KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism}, with SASL)?")
    try:
        # One connection, as the clients make it: TLS, then the SASL handshake, then a request.
        conn = await asyncio.wait_for(
            create_conn(host, int(port), client_id="orion-check", request_timeout_ms=int(timeout * 1000), **options),
            timeout)
        try:
            await asyncio.wait_for(conn.send(ApiVersionRequest()), timeout)
        finally:
            conn.close()
    except SaslAuthenticationFailed as exc:
        raise KafkaSecurityError(
            f"ORION_KAFKA_SASL_USERNAME / ORION_KAFKA_SASL_PASSWORD: the broker at {where} refused "
            f"{settings.kafka_sasl_username!r} ({settings.kafka_sasl_mechanism}): {_said(exc)}") from None
    except UnsupportedSaslMechanismError as exc:
        raise KafkaSecurityError(
            f"ORION_KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism} is not offered by the broker at "
            f"{where}: {_said(exc)}") from None
    except TimeoutError:
        raise KafkaSecurityError(f"the broker at {where} gave no Kafka answer within {timeout:.0f}s: {mismatch}") from None
    except KafkaConnectionError:
        # Connected, then closed on the first request: the listener speaks something else.
        raise KafkaSecurityError(f"the broker at {where} closed the connection on the first request: {mismatch}") from None
    except OSError:
        return  # down or unreachable: the clients retry


async def _check_tls(
    context: ssl.SSLContext, host: str, port: int, where: str, timeout: float, *, client_cert: bool,
) -> None:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=host), timeout)
    except ssl.SSLCertVerificationError as exc:
        raise KafkaSecurityError(
            f"ORION_KAFKA_SSL_CAFILE: the certificate of the broker at {where} is not trusted "
            f"({exc.verify_message}); set the CA that signed it"
            f"{' (or ORION_KAFKA_SSL_CHECK_HOSTNAME=false for a name mismatch)' if 'match' in str(exc) else ''}"
        ) from None
    except ssl.SSLError as exc:
        raise KafkaSecurityError(
            f"ORION_KAFKA_SECURITY_PROTOCOL: the broker at {where} did not complete a TLS handshake "
            f"({_reason(exc)}): is its listener TLS, and does it want a client certificate "
            "(ORION_KAFKA_SSL_CERTFILE)?") from None
    except TimeoutError:
        raise KafkaSecurityError(
            f"ORION_KAFKA_SECURITY_PROTOCOL: no TLS handshake with the broker at {where} within "
            f"{timeout:.0f}s: is its listener TLS?") from None
    except OSError:
        return  # down or unreachable: the clients retry
    if client_cert:
        # TLS 1.3: the broker judges the client's certificate after the client's side of the
        # handshake is done, and says so with an alert on the next read.
        try:
            await asyncio.wait_for(reader.read(1), CLIENT_CERT_VERDICT)
        except ssl.SSLError as exc:
            writer.close()
            raise KafkaSecurityError(
                f"ORION_KAFKA_SSL_CERTFILE: the broker at {where} refused the client certificate "
                f"({_reason(exc)})") from None
        except (TimeoutError, OSError):
            pass  # no verdict: accepted
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


def _said(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__
