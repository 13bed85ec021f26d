"""Development mail catcher: an aiosmtpd server that keeps every message it receives.

Tests can script failures (``refuse``: the next DATA commands get an error reply), count
delivery attempts (``attempts``), require SMTP AUTH (``credentials``) and serve STARTTLS or
implicit TLS with a certificate of their own (``security``, ``cert_file``, ``key_file``), so
that what Orion trusts and sends over TLS is proven against a real server.
"""

from __future__ import annotations

import email.policy
import itertools
import logging
import ssl
import threading
import time
from collections.abc import Mapping
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from ._common import DevServiceError, Service, wait_until
from .ports import LOOPBACK

log = logging.getLogger("orion.devstack.smtp")

_PARSER = BytesParser(policy=email.policy.default)


class _Handler:
    """aiosmtpd handler; runs on the controller's thread."""

    def __init__(self, catcher: MailCatcher) -> None:
        self._catcher = catcher

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        # Record the envelope: Bcc recipients never appear in the headers otherwise.
        header = (
            f"X-Envelope-From: {envelope.mail_from}\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        refusal = self._catcher._next_reply()
        if refusal is not None:
            return refusal
        self._catcher._store(header + raw)
        return "250 Message accepted for delivery"


class _Authenticator:
    """aiosmtpd authenticator for LOGIN/PLAIN against a fixed user -> password map."""

    def __init__(self, credentials: Mapping[str, str]) -> None:
        self._credentials = dict(credentials)

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode("utf-8", "replace")
            password = auth_data.password.decode("utf-8", "replace")
            if user in self._credentials and self._credentials[user] == password:
                return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)


#: How a catcher's clients connect, as in Orion's SmtpServer.security.
SECURITY = ("none", "starttls", "tls")


class MailCatcher(Service):
    """SMTP sink on 127.0.0.1:<port>; messages land in ``messages`` and ``<state_dir>/mail``.

    ``security`` is ``"none"`` (plain, the default), ``"starttls"`` (STARTTLS offered and
    required before MAIL: 530 otherwise) or ``"tls"`` (implicit TLS from the first byte); both
    TLS modes need ``cert_file`` and ``key_file`` (PEM). With ``credentials`` (user ->
    password) the server offers AUTH PLAIN/LOGIN and refuses mail from clients that did not
    log in (530): on a plain server without TLS, under STARTTLS only once the connection is
    encrypted. Refusals scripted with ``refuse`` and the ``attempts`` counter are thread-safe.
    """

    def __init__(
        self,
        state_dir: Path,
        port: int = 1025,
        *,
        credentials: Mapping[str, str] | None = None,
        security: str = "none",
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        if security not in SECURITY:
            raise ValueError(f"security {security!r} is not one of {', '.join(SECURITY)}")
        if (security == "none") != (cert_file is None and key_file is None) or (cert_file is None) != (
            key_file is None
        ):
            raise ValueError("security starttls and tls need cert_file and key_file, none takes neither")
        self.security = security
        self._cert = (Path(cert_file), Path(key_file)) if cert_file and key_file else None
        self.state_dir = Path(state_dir)
        self.mail_dir = self.state_dir / "mail"
        self._port = port
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._controller: Controller | None = None
        self._credentials = dict(credentials) if credentials else None
        self._attempts = 0
        self._refusals = 0  # DATA commands still to refuse; -1 = all of them
        self._refusal_reply = ""

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """How Orion reaches this catcher (ORION_SMTP_URL), without credentials."""
        if self.security == "tls":
            return f"smtps://{self.host}:{self._port}"
        suffix = "?starttls=true" if self.security == "starttls" else ""
        return f"smtp://{self.host}:{self._port}{suffix}"

    def _server_options(self) -> dict[str, Any]:
        """Controller and aiosmtpd SMTP keyword arguments for ``security`` and ``credentials``."""
        options: dict[str, Any] = {}
        if self._cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self._cert)
            if self.security == "starttls":
                options.update(tls_context=context, require_starttls=True)
            else:
                options.update(ssl_context=context)
        if self._credentials is not None:
            options.update(
                authenticator=_Authenticator(self._credentials),
                auth_required=True,
                # aiosmtpd counts only STARTTLS as encryption: on a plain server AUTH is
                # deliberately allowed in clear, and behind implicit TLS it must be (aiosmtpd
                # would offer no AUTH at all otherwise). Either way aiosmtpd warns.
                auth_require_tls=self.security == "starttls",
            )
        return options

    def start(self) -> None:
        if self._controller is not None:
            return
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        controller = Controller(
            _Handler(self),
            hostname=LOOPBACK,
            port=self._port,
            server_hostname="orion-mailcatcher",
            **self._server_options(),
        )
        try:
            controller.start()
        except Exception as exc:
            raise DevServiceError(
                f"mail catcher could not listen on {LOOPBACK}:{self._port}: {exc}"
            ) from exc
        self._controller = controller
        log.info("mail catcher listening on %s, saving to %s", self.url, self.mail_dir)

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def wait_for(self, count: int = 1, timeout: float = 10) -> list[EmailMessage]:
        """Block until at least ``count`` messages arrived; returns a snapshot of them."""
        if not wait_until(lambda: len(self.messages) >= count, timeout, interval=0.05):
            raise TimeoutError(f"{len(self.messages)} of {count} message(s) after {timeout}s")
        with self._lock:
            return list(self.messages)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    @property
    def attempts(self) -> int:
        """DATA commands received so far, accepted or refused."""
        with self._lock:
            return self._attempts

    def refuse(self, count: int = 1, reply: str = "451 4.3.0 Try again later") -> None:
        """Answer the next ``count`` DATA commands with ``reply`` (-1: all, until
        ``accept_all``). ``reply`` must start with a 4xx or 5xx code."""
        if count < -1:
            raise ValueError("count must be -1 (forever), 0 or positive")
        code = reply[:3]
        if not (code.isdigit() and code[0] in "45" and reply[3:4] in ("", " ", "-")):
            raise ValueError(f"reply {reply!r} must start with a 4xx or 5xx SMTP code")
        with self._lock:
            self._refusals = count
            self._refusal_reply = reply

    def accept_all(self) -> None:
        """Stop refusing: accept every following message."""
        with self._lock:
            self._refusals = 0

    def _next_reply(self) -> str | None:
        """Count a DATA attempt; the scripted error reply for it, or None to accept."""
        with self._lock:
            self._attempts += 1
            if self._refusals == 0:
                return None
            if self._refusals > 0:
                self._refusals -= 1
            return self._refusal_reply

    def _store(self, raw: bytes) -> None:
        message = _PARSER.parsebytes(raw)
        assert isinstance(message, EmailMessage)  # guaranteed by policy=default
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{next(self._seq):05d}.eml"
        (self.mail_dir / name).write_bytes(raw)
        with self._lock:
            self.messages.append(message)
        log.info("caught mail %r to %s", message.get("Subject"), message.get("To"))
