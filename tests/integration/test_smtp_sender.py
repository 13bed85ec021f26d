"""SmtpSender against real aiosmtpd servers (MailCatcher) on free local ports.

Needs neither Kafka nor PostgreSQL: no test here requests the session services.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from orion_devstack import MailCatcher
from orion_devstack.ports import LOOPBACK, free_port
from orion_streams.adapters.email import (
    Delivery,
    PermanentEmailError,
    RenderedEmail,
    SmtpSender,
    SmtpServer,
    TemporaryEmailError,
    compose,
)

from .harness import catchers

StartCatcher = Callable[..., MailCatcher]

RENDERED = RenderedEmail(
    subject="Your order 1f2e3d4c has been received",
    text="We got your order.\n\n  - Desk lamp (SKU LAMP-01): 2 x 12.50 EUR = 25.00 EUR\n",
    html="<table><tr><td>Desk lamp</td><td>25.00 EUR</td></tr></table>\n",
)


@pytest.fixture
def start_catcher(tmp_path: Path) -> Iterator[StartCatcher]:
    """Start MailCatchers on free ports; all are stopped when the test ends."""
    with catchers(tmp_path) as start_one:
        yield lambda credentials=None: start_one(credentials=credentials)


def server_for(catcher: MailCatcher, **kwargs: str) -> SmtpServer:
    return SmtpServer(catcher.host, catcher.port, "none", **kwargs)


def down_server() -> SmtpServer:
    """A port nothing listens on."""
    return SmtpServer(LOOPBACK, free_port(), "none")


def message(**headers: str) -> EmailMessage:
    return compose(
        RENDERED,
        sender="Orion Shop <shop@orion.local>",
        to=["ada@example.com", "audit@orion.local"],
        headers={"X-Correlation-ID": "corr-1", **headers},
    )


async def test_primary_delivers(start_catcher: StartCatcher) -> None:
    catcher = start_catcher()
    msg = message()
    delivery = await SmtpSender(server_for(catcher), timeout=5).send(msg)

    assert delivery == Delivery(
        server=f"smtp://{LOOPBACK}:{catcher.port}", message_id=msg["Message-ID"]
    )
    (got,) = catcher.messages
    assert catcher.attempts == 1
    assert got["X-Envelope-From"] == "shop@orion.local"
    assert got["X-Envelope-To"] == "ada@example.com, audit@orion.local"
    assert got["Subject"] == RENDERED.subject
    assert got["Message-ID"] == msg["Message-ID"]
    assert got["X-Correlation-ID"] == "corr-1"
    assert got.get_content_type() == "multipart/alternative"
    plain = got.get_body(("plain",))
    rich = got.get_body(("html",))
    assert isinstance(plain, EmailMessage) and isinstance(rich, EmailMessage)
    # The catcher keeps the wire's CRLF line endings.
    assert plain.get_content().replace("\r\n", "\n") == RENDERED.text
    assert rich.get_content().replace("\r\n", "\n") == RENDERED.html
    assert [p.get_content_type() for p in got.iter_parts()] == ["text/plain", "text/html"]
    assert len(list(catcher.mail_dir.glob("*.eml"))) == 1


async def test_primary_down_uses_fallback(
    start_catcher: StartCatcher, caplog: pytest.LogCaptureFixture
) -> None:
    fallback = start_catcher()
    primary = down_server()
    caplog.set_level(logging.WARNING, logger="orion.email")

    delivery = await SmtpSender(primary, server_for(fallback), timeout=5).send(message())

    assert delivery.server == server_for(fallback).label
    assert len(fallback.messages) == 1
    (record,) = [r for r in caplog.records if r.name == "orion.email"]
    assert record.levelno == logging.WARNING
    assert primary.label in record.getMessage() and "connection refused" in record.getMessage()
    assert server_for(fallback).label in record.getMessage()


async def test_both_down_is_temporary() -> None:
    primary, fallback = down_server(), down_server()
    with pytest.raises(TemporaryEmailError) as caught:
        await SmtpSender(primary, fallback, timeout=5).send(message())
    assert str(caught.value) == (
        f"{primary.label}: connection refused; {fallback.label}: connection refused"
    )
    assert caught.value.temporary is True
    assert caught.value.server == fallback.label


async def test_451_without_fallback_is_temporary(start_catcher: StartCatcher) -> None:
    catcher = start_catcher()
    catcher.refuse(1, "451 4.3.0 Try again later")
    sender = SmtpSender(server_for(catcher), timeout=5)
    with pytest.raises(TemporaryEmailError) as caught:
        await sender.send(message())
    assert str(caught.value) == f"{server_for(catcher).label}: 451 4.3.0 Try again later"
    assert caught.value.server == server_for(catcher).label
    assert catcher.messages == [] and catcher.attempts == 1

    # The refusal was for one message only: the retry goes through.
    await sender.send(message())
    assert len(catcher.messages) == 1 and catcher.attempts == 2


async def test_451_with_fallback_uses_fallback(start_catcher: StartCatcher) -> None:
    primary, fallback = start_catcher(), start_catcher()
    primary.refuse(-1)
    sender = SmtpSender(server_for(primary), server_for(fallback), timeout=5)
    for _ in range(2):
        delivery = await sender.send(message())
        assert delivery.server == server_for(fallback).label
    assert primary.attempts == 2 and primary.messages == []
    assert len(fallback.messages) == 2

    primary.accept_all()
    assert (await sender.send(message())).server == server_for(primary).label
    assert len(primary.messages) == 1


async def test_550_is_permanent(start_catcher: StartCatcher) -> None:
    catcher = start_catcher()
    catcher.refuse(-1, "550 5.7.1 Message rejected as spam")
    with pytest.raises(PermanentEmailError) as caught:
        await SmtpSender(server_for(catcher), timeout=5).send(message())
    assert caught.value.temporary is False
    assert "550 5.7.1 Message rejected as spam" in str(caught.value)


async def test_mixed_failures_are_temporary(start_catcher: StartCatcher) -> None:
    primary, fallback = start_catcher(), start_catcher()
    primary.refuse(-1, "550 5.7.1 Message rejected")
    fallback.refuse(-1, "451 4.3.0 Try again later")
    with pytest.raises(TemporaryEmailError) as caught:
        await SmtpSender(server_for(primary), server_for(fallback), timeout=5).send(message())
    assert str(caught.value) == (
        f"{server_for(primary).label}: 550 5.7.1 Message rejected; "
        f"{server_for(fallback).label}: 451 4.3.0 Try again later"
    )

    fallback.refuse(-1, "554 5.6.0 Bad content")
    with pytest.raises(PermanentEmailError):
        await SmtpSender(server_for(primary), server_for(fallback), timeout=5).send(message())


async def test_per_server_from_address(start_catcher: StartCatcher) -> None:
    primary, fallback = start_catcher(), start_catcher()
    primary.refuse(-1)
    relay = server_for(fallback, from_address="Relay <relay@mail.example.com>")
    msg = message()
    original = msg.as_bytes()

    delivery = await SmtpSender(server_for(primary), relay, timeout=5).send(msg)

    (got,) = fallback.messages
    assert got["From"] == "Relay <relay@mail.example.com>"
    assert got["X-Envelope-From"] == "relay@mail.example.com"
    assert got["Message-ID"] == msg["Message-ID"] == delivery.message_id
    assert msg.as_bytes() == original  # the caller's message is untouched


async def test_message_without_message_id_gets_one(start_catcher: StartCatcher) -> None:
    catcher = start_catcher()
    msg = EmailMessage()
    msg["From"] = "shop@orion.local"
    msg["To"] = "ada@example.com"
    msg["Subject"] = "Plain"
    msg.set_content("hello")
    delivery = await SmtpSender(server_for(catcher), timeout=5).send(msg)
    assert msg["Message-ID"] is None
    assert delivery.message_id.endswith("@orion.local>")
    assert catcher.messages[0]["Message-ID"] == delivery.message_id


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_auth(start_catcher: StartCatcher) -> None:
    """In clear, as allowed explicitly (tests/integration/test_smtp_tls.py: over TLS)."""
    password = "s3cr:t@pw"
    catcher = start_catcher(credentials={"relay": password})
    url = f"smtp://relay:s3cr%3At%40pw@{catcher.host}:{catcher.port}"
    sender = SmtpSender(SmtpServer.from_url(url), timeout=5, allow_plain_auth=True)
    delivery = await sender.send(message())
    assert delivery.server == f"smtp://{catcher.host}:{catcher.port}"
    assert len(catcher.messages) == 1

    wrong = server_for(catcher, username="relay", password="not-the-password")
    with pytest.raises(PermanentEmailError) as caught:
        await SmtpSender(wrong, timeout=5, allow_plain_auth=True).send(message())
    assert "535" in str(caught.value)
    assert "not-the-password" not in str(caught.value) + repr(caught.value)

    with pytest.raises(PermanentEmailError, match="530"):
        await SmtpSender(server_for(catcher), timeout=5).send(message())
    assert len(catcher.messages) == 1


@pytest.fixture
async def silent_server() -> AsyncIterator[SmtpServer]:
    """Accepts TCP connections and never says a word."""
    connections: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield SmtpServer(LOOPBACK, port, "none")
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_timeout_is_temporary_and_falls_back(
    silent_server: SmtpServer, start_catcher: StartCatcher
) -> None:
    with pytest.raises(TemporaryEmailError, match="timed out"):
        await SmtpSender(silent_server, timeout=0.3).send(message())

    fallback = start_catcher()
    delivery = await SmtpSender(silent_server, server_for(fallback), timeout=0.3).send(message())
    assert delivery.server == server_for(fallback).label


@pytest.mark.parametrize(
    ("codes", "error"),
    [((550, 553), PermanentEmailError), ((550, 450), TemporaryEmailError)],
)
async def test_refused_recipients_classification(
    monkeypatch: pytest.MonkeyPatch, codes: tuple[int, int], error: type[Exception]
) -> None:
    """aiosmtpd's catcher accepts every RCPT, so this stubs the transport instead."""

    async def refuse_all(*args: object, **kwargs: object) -> None:
        raise aiosmtplib.SMTPRecipientsRefused(
            [
                aiosmtplib.SMTPRecipientRefused(code, "no such user", f"u{code}@example.com")
                for code in codes
            ]
        )

    monkeypatch.setattr(aiosmtplib, "send", refuse_all)
    with pytest.raises(error, match="recipients refused"):
        await SmtpSender(SmtpServer(LOOPBACK, 25, "none"), timeout=5).send(message())
