"""Development mail catcher: an aiosmtpd server that keeps every message it receives."""

from __future__ import annotations

import email.policy
import itertools
import logging
import threading
import time
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller

from ._common import DevServiceError, wait_until
from .ports import LOOPBACK

log = logging.getLogger("orion.devservices.smtp")

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
        self._catcher._store(header + raw)
        return "250 Message accepted for delivery"


class MailCatcher:
    """SMTP sink on 127.0.0.1:<port>; messages land in ``messages`` and ``<state_dir>/mail``."""

    def __init__(self, state_dir: Path, port: int = 1025) -> None:
        self.state_dir = Path(state_dir)
        self.mail_dir = self.state_dir / "mail"
        self._port = port
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._controller: Controller | None = None

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        if self._controller is not None:
            return
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        controller = Controller(
            _Handler(self), hostname=LOOPBACK, port=self._port, server_hostname="orion-mailcatcher"
        )
        try:
            controller.start()
        except Exception as exc:
            raise DevServiceError(
                f"mail catcher could not listen on {LOOPBACK}:{self._port}: {exc}"
            ) from exc
        self._controller = controller
        log.info(
            "mail catcher listening on %s:%d, saving to %s", LOOPBACK, self._port, self.mail_dir
        )

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

    def __enter__(self) -> MailCatcher:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _store(self, raw: bytes) -> None:
        message = _PARSER.parsebytes(raw)
        assert isinstance(message, EmailMessage)  # guaranteed by policy=default
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{next(self._seq):05d}.eml"
        (self.mail_dir / name).write_bytes(raw)
        with self._lock:
            self.messages.append(message)
        log.info("caught mail %r to %s", message.get("Subject"), message.get("To"))
