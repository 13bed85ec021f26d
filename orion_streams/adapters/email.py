"""Email: Jinja2 templates rendered to text + HTML, MIME composition and SMTP delivery.

``EmailRenderer`` turns a template folder (``subject.txt``, ``body.txt``, ``body.html``) and a
context into a ``RenderedEmail``; ``compose`` wraps that in a multipart/alternative
``EmailMessage``; ``SmtpSender`` delivers it over aiosmtplib to a primary server and, when
that fails for any reason, to an optional fallback. Failures are classified as temporary
(retry later) or permanent (do not retry) from the SMTP reply codes.

STARTTLS and implicit TLS check the server's certificate and name (against
ORION_SMTP_CA_FILE's CAs, or the system's), and a password is only ever sent over an
encrypted connection unless ORION_SMTP_ALLOW_PLAIN_AUTH says otherwise.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
import jinja2

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("orion.email")

#: Files every message folder must hold.
TEMPLATE_PARTS = ("subject.txt", "body.txt", "body.html")

# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class RenderedEmail:
    """One rendered message: single-line subject, plain-text body and HTML body."""

    subject: str
    text: str
    html: str


def default_template_dir() -> Path:
    """``orion_streams/templates/email`` as shipped with the package (editable or not)."""
    return Path(str(files("orion_streams").joinpath("templates", "email")))


_BLANK_RUNS = re.compile(r"\n{3,}")


def _tidy_text(text: str) -> str:
    """Strip trailing spaces, collapse runs of blank lines, end with exactly one newline."""
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)) + "\n"


class EmailRenderer:
    """Renders the templates in orion_streams/templates/email (or `directory`).

    Each message is a folder ``<name>/`` with ``subject.txt``, ``body.txt`` and ``body.html``;
    shared layouts and macros (``base.html``, ``base.txt``, ...) live next to the folders.
    HTML is autoescaped, text is not; both use StrictUndefined, so a missing variable is an
    error rather than an empty string. All templates are compiled up front, so rendering
    does no file I/O and template syntax errors surface at construction.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_template_dir()
        if not self.directory.is_dir():
            raise FileNotFoundError(f"email template directory {self.directory} does not exist")
        loader = jinja2.FileSystemLoader(str(self.directory))
        self._html_env = jinja2.Environment(
            loader=loader,
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        self._text_env = jinja2.Environment(
            loader=loader,
            autoescape=False,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            auto_reload=False,
        )
        names = sorted(
            entry.name
            for entry in self.directory.iterdir()
            if entry.is_dir()
            and not entry.name.startswith(("_", "."))
            and all((entry / part).is_file() for part in TEMPLATE_PARTS)
        )
        self._templates: dict[str, tuple[jinja2.Template, jinja2.Template, jinja2.Template]] = {
            name: (
                self._text_env.get_template(f"{name}/subject.txt"),
                self._text_env.get_template(f"{name}/body.txt"),
                self._html_env.get_template(f"{name}/body.html"),
            )
            for name in names
        }

    @property
    def templates(self) -> tuple[str, ...]:
        """Names of the message folders found, sorted."""
        return tuple(self._templates)

    def render(self, template: str, context: Mapping[str, Any]) -> RenderedEmail:
        """Render ``template`` with ``context``.

        Raises KeyError for an unknown template and jinja2.UndefinedError when the
        context lacks a variable the template uses.
        """
        try:
            subject_t, text_t, html_t = self._templates[template]
        except KeyError:
            known = ", ".join(self._templates) or "none"
            raise KeyError(
                f"unknown email template {template!r} in {self.directory} (known: {known})"
            ) from None
        variables = dict(context)
        subject = " ".join(subject_t.render(variables).split())
        text = _tidy_text(text_t.render(variables))
        html = html_t.render(variables).strip() + "\n"
        return RenderedEmail(subject=subject, text=text, html=html)


# --------------------------------------------------------------------------- MIME

_RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)


def _domain_of(address: str | None) -> str:
    """Domain part of an address (``"Shop <a@b.c>"`` -> ``b.c``); ``localhost`` if none."""
    _, addr = parseaddr(address or "")
    domain = addr.rpartition("@")[2].strip().strip("[]")
    return domain or "localhost"


def compose(
    rendered: RenderedEmail,
    *,
    sender: str,
    to: Sequence[str],
    message_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> EmailMessage:
    """Build a multipart/alternative message: text/plain first, then text/html (utf-8).

    Sets From, To, Subject, Date and Message-ID (``make_msgid(domain=<sender's domain>)``
    unless ``message_id`` is given), then adds ``headers`` as given. ``headers`` may not
    redefine the headers set here (ValueError).
    """
    if isinstance(to, str):
        to = [to]
    if not to:
        raise ValueError("an email needs at least one recipient")
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = rendered.subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = message_id or make_msgid(domain=_domain_of(sender))
    for name, value in (headers or {}).items():
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by compose() and cannot be overridden")
        msg[name] = value
    msg.set_content(rendered.text, subtype="plain", charset="utf-8")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
    return msg


# --------------------------------------------------------------------------- SMTP servers

_SECURITY = ("none", "starttls", "tls")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _shown_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for error messages."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    netloc = f"{user}:***@{hostport}" if has_password else f"{user}@{hostport}"
    return parts._replace(netloc=netloc).geturl()


@dataclass(frozen=True, repr=False)
class SmtpServer:
    """One SMTP relay: where it is, how to secure the connection, how to log in.

    ``security`` is ``"none"`` (plain, no STARTTLS even if offered), ``"starttls"`` or
    ``"tls"`` (implicit TLS). ``from_address``, when set, is used as envelope sender and
    From header for mail sent through this server (relays often insist on their own).
    """

    host: str
    port: int
    security: str
    username: str | None = None
    password: str | None = None
    from_address: str | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("SMTP server needs a host")
        if not 0 < self.port < 65536:
            raise ValueError(f"SMTP port {self.port} is out of range 1-65535")
        if self.security not in _SECURITY:
            raise ValueError(
                f"SMTP security {self.security!r} is not one of {', '.join(_SECURITY)}"
            )
        if self.password is not None and self.username is None:
            raise ValueError("SMTP password given without a username")
        if self.from_address is not None and "@" not in parseaddr(self.from_address)[1]:
            raise ValueError(f"SMTP from address {self.from_address!r} is not an email address")

    @classmethod
    def from_url(cls, url: str) -> SmtpServer:
        """Parse ``smtp://[user:pass@]host[:port][?starttls=true][&from=addr]`` or
        ``smtps://[user:pass@]host[:port][?from=addr]``.

        Default ports: 25 (smtp), 587 (smtp with starttls), 465 (smtps). User and password
        are percent-decoded. Anything malformed raises ValueError; the message never
        contains the password.
        """
        shown = _shown_url(url)
        try:
            parts = urlsplit(url.strip())
        except ValueError as exc:
            raise ValueError(f"invalid SMTP URL {shown!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("smtp", "smtps"):
            raise ValueError(
                f"invalid SMTP URL {shown!r}: scheme must be smtp:// or smtps://"
                f"{f', not {scheme}://' if scheme else ''}"
            )
        host = parts.hostname
        if not host:
            raise ValueError(f"invalid SMTP URL {shown!r}: no host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"invalid SMTP URL {shown!r}: bad port") from None
        if port == 0:
            raise ValueError(f"invalid SMTP URL {shown!r}: bad port")
        if parts.path not in ("", "/") or parts.fragment:
            raise ValueError(f"invalid SMTP URL {shown!r}: unexpected path or fragment")
        try:
            query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError:
            raise ValueError(f"invalid SMTP URL {shown!r}: malformed query string") from None
        unknown = sorted(set(query) - {"starttls", "from"})
        if unknown:
            raise ValueError(
                f"invalid SMTP URL {shown!r}: unknown parameter(s) {', '.join(unknown)} "
                "(known: starttls, from)"
            )
        if any(len(values) > 1 for values in query.values()):
            raise ValueError(f"invalid SMTP URL {shown!r}: repeated parameter")
        starttls_raw = query.get("starttls", ["false"])[0].lower()
        if starttls_raw not in _TRUE | _FALSE:
            raise ValueError(f"invalid SMTP URL {shown!r}: starttls must be true or false")
        starttls = starttls_raw in _TRUE
        if scheme == "smtps":
            if starttls:
                raise ValueError(
                    f"invalid SMTP URL {shown!r}: smtps:// is implicit TLS, drop starttls=true"
                )
            security, default_port = "tls", 465
        elif starttls:
            security, default_port = "starttls", 587
        else:
            security, default_port = "none", 25
        username = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        from_address = query["from"][0] if "from" in query else None
        try:
            return cls(
                host=host,
                port=port or default_port,
                security=security,
                username=username or None,
                password=password if username else None,
                from_address=from_address or None,
            )
        except ValueError as exc:
            raise ValueError(f"invalid SMTP URL {shown!r}: {exc}") from None

    @property
    def label(self) -> str:
        """``smtp://host:port`` or ``smtps://host:port``; never credentials."""
        scheme = "smtps" if self.security == "tls" else "smtp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def __repr__(self) -> str:
        return (
            f"SmtpServer(host={self.host!r}, port={self.port}, security={self.security!r}, "
            f"username={self.username!r}, password={'***' if self.password else None}, "
            f"from_address={self.from_address!r})"
        )

    __str__ = __repr__


# --------------------------------------------------------------------------- errors


class EmailError(Exception):
    """Sending failed. ``temporary`` says whether a retry later may succeed.

    ``server`` is the label of the last server tried. The message never holds a password.
    """

    temporary: bool = True

    def __init__(
        self, message: str, *, server: str | None = None, temporary: bool | None = None
    ) -> None:
        super().__init__(message)
        self.server = server
        if temporary is not None:
            self.temporary = temporary


class TemporaryEmailError(EmailError):
    """Retry later: connection problems, timeouts, 4xx replies."""

    temporary = True


class PermanentEmailError(EmailError):
    """Do not retry: every server answered 5xx (bad recipient, rejected content, ...)."""

    temporary = False


@dataclass(frozen=True)
class Delivery:
    """A message accepted by an SMTP server."""

    server: str  # label of the server that took it
    message_id: str


_SSL_NOISE = re.compile(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\] | \(_ssl\.c:\d+\)$")


def _tls_problem(exc: BaseException) -> str | None:
    """What went wrong in a TLS handshake (raised as is by STARTTLS, as the cause of an
    SMTPConnectError by implicit TLS), said so that the setting to fix is clear."""
    error = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate verification failed: {error.verify_message} (trusted CAs: "
            "ORION_SMTP_CA_FILE, or the system's when it is unset)"
        )
    if isinstance(error, ssl.SSLError):
        reason = _SSL_NOISE.sub("", error.strerror or str(error))
        return (
            f"TLS handshake failed: {reason} (smtps:// is TLS from the first byte, "
            "smtp://...?starttls=true upgrades a plain connection: which does the port speak?)"
        )
    return None


def _classify(exc: BaseException) -> tuple[bool, str]:
    """(temporary, short description) for an exception raised while sending."""
    tls = _tls_problem(exc)
    if tls is not None:
        # Configuration (or certificate) trouble that does not make the message
        # undeliverable: once fixed, the retry goes through.
        return True, tls
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = exc.recipients
        permanent = bool(refused) and all(500 <= r.code < 600 for r in refused)
        detail = ", ".join(f"{r.recipient}: {r.code} {r.message}".rstrip() for r in refused)
        return not permanent, f"recipients refused ({detail})"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        text = f"{exc.code} {exc.message}".strip()
        if 500 <= exc.code < 600:
            return False, text
        return True, text
    if isinstance(exc, aiosmtplib.SMTPConnectTimeoutError):
        if isinstance(exc.__cause__, aiosmtplib.SMTPReadTimeoutError):
            # Connected, but no "220" greeting: an implicit TLS port waits for a handshake.
            return True, "timed out waiting for the server's greeting (an smtps:// port says nothing before the TLS handshake)"
        return True, "timed out connecting"
    if isinstance(exc, TimeoutError):  # SMTPTimeoutError, SMTPReadTimeoutError included
        return True, "timed out"
    if isinstance(exc, ConnectionRefusedError) or isinstance(exc.__cause__, ConnectionRefusedError):
        return True, "connection refused"
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return True, f"disconnected: {exc.message}"
    if isinstance(exc, aiosmtplib.SMTPException) and "STARTTLS extension not supported" in (
        exc.message or ""
    ):
        return True, "the server offers no STARTTLS, which starttls=true requires"
    if isinstance(exc, aiosmtplib.SMTPException):
        # Includes SMTPConnectError and SMTPNotSupported (e.g. no STARTTLS/AUTH offered):
        # server or configuration trouble that does not make the message undeliverable.
        return True, exc.message or type(exc).__name__
    if isinstance(exc, OSError):
        return True, str(exc) or type(exc).__name__
    if isinstance(exc, ValueError | TypeError):
        # aiosmtplib raises these for messages it cannot send at all (no sender,
        # no recipients, addresses that cannot be encoded): retrying will not help.
        return False, f"message cannot be sent: {exc}"
    return True, f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- sending


def _server_setting(variable: str, url: str) -> SmtpServer:
    """``SmtpServer.from_url`` whose errors name the setting the URL came from."""
    try:
        return SmtpServer.from_url(url)
    except ValueError as exc:
        raise ValueError(f"{variable}: {exc}") from None


def _trusting(ca_file: Path | None) -> ssl.SSLContext:
    """A client TLS context that checks the server's certificate and name against
    ``ca_file``'s CAs (the system's when None); loaded once, so a bad file stops start-up."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except OSError as exc:  # ssl.SSLError included: not PEM, no certificate in it
        reason = _SSL_NOISE.sub("", exc.strerror or str(exc))
        raise ValueError(
            f"ORION_SMTP_CA_FILE: cannot load CA certificates from {ca_file}: {reason}"
        ) from None


class SmtpSender:
    """Delivers messages to a primary SMTP server, falling back to a second one.

    One connection per message. ``timeout`` applies to the connect and to every SMTP
    command. The caller's message is never modified: a copy gets the server's
    ``from_address`` (if any) and a Message-ID/Date when missing.

    STARTTLS and implicit TLS verify the server's certificate and name with ``tls_context``
    (aiosmtplib's default, the system's CAs, when None). A server with a user but no TLS is
    refused (ValueError) unless ``allow_plain_auth``: its password would cross the network
    in clear.
    """

    def __init__(
        self,
        primary: SmtpServer,
        fallback: SmtpServer | None = None,
        *,
        timeout: float = 10.0,
        tls_context: ssl.SSLContext | None = None,
        allow_plain_auth: bool = False,
    ) -> None:
        if timeout <= 0:
            raise ValueError("SMTP timeout must be positive")
        for server, variable in ((primary, "ORION_SMTP_URL"), (fallback, "ORION_SMTP_FALLBACK_URL")):
            if server is None or server.username is None or server.security != "none":
                continue
            if not allow_plain_auth:
                raise ValueError(
                    f"{variable} logs in to {server.label} without TLS, which would send "
                    "the password in clear: use smtps:// or ?starttls=true, or set "
                    "ORION_SMTP_ALLOW_PLAIN_AUTH=true if the network is trusted"
                )
        self.primary = primary
        self.fallback = fallback
        self.timeout = timeout
        self.tls_context = tls_context

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpSender:
        """The mailer's sender: ORION_SMTP_URL (its password from ORION_SMTP_PASSWORD when
        the URL has none), ORION_SMTP_FALLBACK_URL, TLS trusting ORION_SMTP_CA_FILE.

        Raises ValueError naming the setting to fix, never showing a password.
        """
        primary = _server_setting("ORION_SMTP_URL", settings.smtp_url)
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
        if password:
            if primary.password is not None:
                raise ValueError(
                    "ORION_SMTP_URL has a password and ORION_SMTP_PASSWORD (or "
                    "ORION_SMTP_PASSWORD_FILE) is set too: keep the password in one of them"
                )
            if primary.username is None:
                raise ValueError(
                    "ORION_SMTP_PASSWORD is set but ORION_SMTP_URL has no user to log in as "
                    "(smtp://user@host...)"
                )
            primary = dataclasses.replace(primary, password=password)
        fallback = (
            _server_setting("ORION_SMTP_FALLBACK_URL", settings.smtp_fallback_url)
            if settings.smtp_fallback_url
            else None
        )
        return cls(
            primary,
            fallback,
            timeout=settings.smtp_timeout,
            tls_context=_trusting(settings.smtp_ca_file),
            allow_plain_auth=settings.smtp_allow_plain_auth,
        )

    async def check(self) -> None:
        """Connect to each server once as a send does (TLS or STARTTLS, then the login) and
        raise ValueError naming the setting when only a setting can be wrong: a certificate
        the CA does not vouch for, a TLS mismatch, a refused password. A server that is
        down or slow is only logged: the retries are for that."""
        for server, variable in zip(self.servers, ("ORION_SMTP_URL", "ORION_SMTP_FALLBACK_URL"), strict=False):
            smtp = aiosmtplib.SMTP(
                hostname=server.host, port=server.port, timeout=self.timeout,
                use_tls=server.security == "tls", start_tls=server.security == "starttls",
                tls_context=self.tls_context if server.security != "none" else None,
            )
            try:
                await smtp.connect()
                if server.username is not None:
                    await smtp.login(server.username, server.password or "")
            except aiosmtplib.SMTPAuthenticationError as exc:
                detail = _redact(f"{exc.code} {exc.message}".strip(), server.password)
                raise ValueError(
                    f"{variable}: {server.label} refused the login of {server.username!r} ({detail}); "
                    "check the password (ORION_SMTP_PASSWORD or the URL's)") from None
            except Exception as exc:
                tls = _tls_problem(exc)
                if tls is not None:
                    raise ValueError(f"{variable}: {server.label}: {tls}") from None
                log.warning("SMTP server %s not reachable at start (%s); emails wait and are retried",
                            server.label, _redact(_classify(exc)[1], server.password))
            finally:
                with contextlib.suppress(Exception):
                    if smtp.is_connected:
                        await smtp.quit()

    @property
    def servers(self) -> tuple[SmtpServer, ...]:
        """The servers tried, in order."""
        return (self.primary,) if self.fallback is None else (self.primary, self.fallback)

    async def send(self, message: EmailMessage) -> Delivery:
        """Send ``message``; raises TemporaryEmailError or PermanentEmailError when every
        server failed (permanent only if every failure was permanent)."""
        base = message
        if message["Message-ID"] is None or message["Date"] is None:
            base = copy.deepcopy(message)  # never change the caller's message
            if base["Message-ID"] is None:
                base["Message-ID"] = make_msgid(domain=_domain_of(base["From"]))
            if base["Date"] is None:
                base["Date"] = format_datetime(datetime.now(UTC))
        message_id = str(base["Message-ID"])

        failures: list[str] = []
        all_permanent = True
        last: BaseException | None = None
        servers = self.servers
        for index, server in enumerate(servers):
            try:
                await self._deliver(server, base)
            except Exception as exc:  # every failure moves on to the fallback
                temporary, detail = _classify(exc)
                detail = _redact(detail, *(s.password for s in servers))
                failures.append(f"{server.label}: {detail}")
                all_permanent = all_permanent and not temporary
                last = exc
                if index + 1 < len(servers):
                    log.warning(
                        "SMTP server %s failed (%s); trying fallback %s for %s",
                        server.label,
                        detail,
                        servers[index + 1].label,
                        message_id,
                    )
                continue
            if index:
                log.info("message %s delivered via fallback %s", message_id, server.label)
            return Delivery(server=server.label, message_id=message_id)

        error_type = PermanentEmailError if all_permanent else TemporaryEmailError
        raise error_type("; ".join(failures), server=servers[-1].label) from last

    async def _deliver(self, server: SmtpServer, message: EmailMessage) -> None:
        if server.from_address is not None:
            message = copy.deepcopy(message)
            del message["From"]
            message["From"] = server.from_address
        refused, _ = await aiosmtplib.send(
            message,
            sender=parseaddr(server.from_address)[1] if server.from_address else None,
            hostname=server.host,
            port=server.port,
            username=server.username,
            password=(server.password or "") if server.username is not None else None,
            timeout=self.timeout,
            use_tls=server.security == "tls",
            start_tls=server.security == "starttls",
            tls_context=self.tls_context if server.security != "none" else None,
        )
        if refused:
            log.warning(
                "%s accepted message %s but refused %s",
                server.label,
                message["Message-ID"],
                ", ".join(f"{rcpt} ({resp.code} {resp.message})" for rcpt, resp in refused.items()),
            )


def _redact(text: str, *secrets: str | None) -> str:
    """Replace every non-empty secret in ``text`` with ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
