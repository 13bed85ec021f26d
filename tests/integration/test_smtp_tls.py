"""SMTP over STARTTLS and implicit TLS against real aiosmtpd servers (MailCatcher) with
certificates the test makes: what the mailer trusts, where its password goes, and how a
wrong CA, a missing STARTTLS or a bad password is reported.

Needs neither Kafka nor PostgreSQL: no test here requests the session services.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from orion_devstack import MailCatcher
from orion_devstack.certs import Certs, make_certs
from orion_streams.adapters.email import (
    EmailError,
    PermanentEmailError,
    RenderedEmail,
    SmtpSender,
    TemporaryEmailError,
    compose,
)
from orion_streams.config import Settings

from .harness import catchers

StartCatcher = Callable[..., MailCatcher]

PASSWORD = "pw-Zq8!rX2@relay"  # the test server's
AIOSMTPD_AUTH_WARNING = "ignore:Requiring AUTH while not requiring TLS"
# An implicit TLS catcher with AUTH: aiosmtpd counts only STARTTLS as encryption, so it must
# be told AUTH needs none, and warns (the connection is TLS all the same).
TLS_WITH_AUTH = pytest.param("tls", marks=pytest.mark.filterwarnings(AIOSMTPD_AUTH_WARNING))


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


@pytest.fixture
def start_catcher(tmp_path: Path, certs: Certs) -> Iterator[StartCatcher]:
    """Start MailCatchers on free ports, serving TLS with the test CA's server certificate
    (or ``cert``/``key``) unless ``security="none"``; all are stopped when the test ends."""
    with catchers(tmp_path) as start_one:

        def start(
            security: str,
            credentials: Mapping[str, str] | None = None,
            cert: Path | None = None,
            key: Path | None = None,
        ) -> MailCatcher:
            tls: dict[str, Any] = {}
            if security != "none":
                tls = {"cert_file": cert or certs.server_cert, "key_file": key or certs.server_key}
            return start_one(credentials=credentials, security=security, **tls)

        yield start


def message() -> EmailMessage:
    rendered = RenderedEmail(subject="Your order 1f2e3d4c", text="Got it.\n", html="<p>Got it.</p>\n")
    return compose(rendered, sender="Orion Shop <shop@orion.local>", to=["ada@example.com"])


def sender(url: str, **settings: Any) -> SmtpSender:
    """The mailer's sender for these settings (timeout 10 s: a hang would show)."""
    return SmtpSender.from_settings(Settings(smtp_url=url, smtp_timeout=10, **settings))


async def fails_fast(mailer: SmtpSender, error: type[EmailError] = EmailError) -> EmailError:
    """Send, expect ``error``, and expect it well before the 10 s timeout."""
    started = time.monotonic()
    with pytest.raises(error) as caught:
        await mailer.send(message())
    assert time.monotonic() - started < 3, "the failure took as long as a timeout"
    return caught.value


def with_user(url: str, user: str, password: str | None = None) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}{':' + password if password else ''}@{rest}"


# --------------------------------------------------------------------------- trusting the CA


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_tls_delivers_when_the_server_certificate_is_signed_by_the_ca_file(
    start_catcher: StartCatcher, certs: Certs, security: str
) -> None:
    catcher = start_catcher(security)
    msg = message()

    delivery = await sender(catcher.url, smtp_ca_file=certs.ca).send(msg)

    assert delivery.server == f"{'smtps' if security == 'tls' else 'smtp'}://127.0.0.1:{catcher.port}"
    (got,) = catcher.wait_for(1, timeout=5)
    assert got["Message-ID"] == msg["Message-ID"]
    assert got["Subject"] == "Your order 1f2e3d4c"


async def test_starttls_is_required_by_the_catcher_so_plain_mail_is_refused(
    start_catcher: StartCatcher,
) -> None:
    """What makes the STARTTLS delivery above a proof: this catcher takes no mail in clear."""
    catcher = start_catcher("starttls")
    plain = f"smtp://{catcher.host}:{catcher.port}"

    error = await fails_fast(sender(plain), PermanentEmailError)

    assert "530" in str(error) and "STARTTLS" in str(error)
    assert catcher.messages == []


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_a_server_certificate_from_another_ca_fails_at_once_naming_verification(
    start_catcher: StartCatcher, certs: Certs, security: str
) -> None:
    catcher = start_catcher(security)

    error = await fails_fast(sender(catcher.url, smtp_ca_file=certs.other_ca), TemporaryEmailError)

    assert "TLS certificate verification failed" in str(error)
    assert "unable to get local issuer certificate" in str(error)
    assert "ORION_SMTP_CA_FILE" in str(error)
    assert catcher.messages == [] and catcher.attempts == 0


async def test_without_a_ca_file_the_system_cas_do_not_trust_a_private_ca(
    start_catcher: StartCatcher,
) -> None:
    catcher = start_catcher("starttls")
    error = await fails_fast(sender(catcher.url), TemporaryEmailError)
    assert "TLS certificate verification failed" in str(error)
    assert catcher.messages == []


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_a_certificate_for_another_host_name_is_refused(
    start_catcher: StartCatcher, tmp_path: Path, security: str
) -> None:
    """The CA is right, the name is not: the host name is checked too."""
    elsewhere = make_certs(tmp_path / "elsewhere", hosts=("mail.example.com",))
    catcher = start_catcher(security, cert=elsewhere.server_cert, key=elsewhere.server_key)

    error = await fails_fast(sender(catcher.url, smtp_ca_file=elsewhere.ca), TemporaryEmailError)

    assert "TLS certificate verification failed" in str(error)
    assert "mismatch" in str(error) and "127.0.0.1" in str(error)
    assert catcher.messages == []


# --------------------------------------------------------------------------- protocol mismatch


async def test_starttls_required_but_not_offered_is_a_clear_error(
    start_catcher: StartCatcher, certs: Certs
) -> None:
    catcher = start_catcher("none")

    error = await fails_fast(
        sender(f"{catcher.url}?starttls=true", smtp_ca_file=certs.ca), TemporaryEmailError
    )

    assert str(error) == (
        f"smtp://127.0.0.1:{catcher.port}: the server offers no STARTTLS, "
        "which starttls=true requires"
    )
    assert catcher.messages == [] and catcher.attempts == 0


async def test_implicit_tls_to_a_plain_port_fails_at_once_naming_the_handshake(
    start_catcher: StartCatcher, certs: Certs
) -> None:
    catcher = start_catcher("none")
    implicit = f"smtps://{catcher.host}:{catcher.port}"

    error = await fails_fast(sender(implicit, smtp_ca_file=certs.ca), TemporaryEmailError)

    assert "TLS handshake failed: wrong version number" in str(error)
    assert "_ssl.c" not in str(error)
    assert catcher.messages == []


async def test_starttls_to_an_implicit_tls_port_times_out_saying_why(
    start_catcher: StartCatcher, certs: Certs
) -> None:
    """The server waits for a TLS handshake, the client for a greeting: only the timeout
    ends that, so it is what bounds the wait."""
    catcher = start_catcher("tls")
    upgrade = f"smtp://{catcher.host}:{catcher.port}?starttls=true"
    mailer = SmtpSender.from_settings(
        Settings(smtp_url=upgrade, smtp_ca_file=certs.ca, smtp_timeout=0.5)
    )

    error = await fails_fast(mailer, TemporaryEmailError)

    assert "timed out waiting for the server's greeting" in str(error)
    assert "smtps://" in str(error)
    assert catcher.messages == []


# --------------------------------------------------------------------------- AUTH


@pytest.fixture
def password_file(tmp_path: Path) -> Callable[[str], Path]:
    def write(password: str) -> Path:
        path = tmp_path / f"smtp-password-{len(password)}"
        path.write_text(password + "\n")  # as secrets are often mounted: a final newline
        return path

    return write


@pytest.mark.parametrize("security", ["starttls", TLS_WITH_AUTH])
async def test_auth_over_tls_with_the_password_from_orion_smtp_password_file(
    start_catcher: StartCatcher,
    certs: Certs,
    password_file: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    security: str,
) -> None:
    catcher = start_catcher(security, credentials={"relay": PASSWORD})
    monkeypatch.setenv("ORION_SMTP_URL", with_user(catcher.url, "relay"))
    monkeypatch.setenv("ORION_SMTP_PASSWORD_FILE", str(password_file(PASSWORD)))
    monkeypatch.setenv("ORION_SMTP_CA_FILE", str(certs.ca))

    await SmtpSender.from_settings(Settings.from_env()).send(message())

    assert len(catcher.wait_for(1, timeout=5)) == 1


@pytest.mark.parametrize("security", ["starttls", TLS_WITH_AUTH])
async def test_a_wrong_password_is_permanent_and_never_shown(
    start_catcher: StartCatcher,
    certs: Certs,
    password_file: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    security: str,
) -> None:
    primary = start_catcher(security, credentials={"relay": PASSWORD})
    fallback = start_catcher(security, credentials={"relay": PASSWORD})
    wrong = "wrong-" + PASSWORD
    monkeypatch.setenv("ORION_SMTP_URL", with_user(primary.url, "relay"))
    monkeypatch.setenv("ORION_SMTP_PASSWORD_FILE", str(password_file(wrong)))
    # A fallback with its own (wrong) password in its URL, so a warning is logged too.
    monkeypatch.setenv("ORION_SMTP_FALLBACK_URL", with_user(fallback.url, "relay", "Wr0ng-too"))
    monkeypatch.setenv("ORION_SMTP_CA_FILE", str(certs.ca))
    caplog.set_level(logging.DEBUG)

    error = await fails_fast(SmtpSender.from_settings(Settings.from_env()), PermanentEmailError)

    assert str(error).count("535") == 2  # each server said: authentication failed
    ours = [r for r in caplog.records if r.name.startswith(("orion", "aiosmtplib"))]
    assert any("535" in r.getMessage() for r in ours)  # the fallback warning was logged
    for text in [str(error), repr(error), *(r.getMessage() for r in ours)]:
        assert wrong not in text and "Wr0ng-too" not in text
    assert primary.messages == [] and fallback.messages == []


@pytest.mark.filterwarnings(AIOSMTPD_AUTH_WARNING)
async def test_auth_in_clear_is_refused_when_the_sender_is_built_unless_allowed(
    start_catcher: StartCatcher,
) -> None:
    catcher = start_catcher("none")
    url = with_user(catcher.url, "relay", PASSWORD)

    with pytest.raises(ValueError, match="ORION_SMTP_URL.*ORION_SMTP_ALLOW_PLAIN_AUTH") as caught:
        sender(url)
    assert PASSWORD not in str(caught.value)

    # Allowed: the password goes in clear to a server that asks for it.
    plain_auth = start_catcher("none", credentials={"relay": PASSWORD})
    await sender(with_user(plain_auth.url, "relay", PASSWORD), smtp_allow_plain_auth=True).send(
        message()
    )
    assert len(plain_auth.wait_for(1, timeout=5)) == 1


# --------------------------------------------------------------------------- at start-up


@pytest.mark.parametrize("security", ["starttls", TLS_WITH_AUTH])
async def test_the_start_up_check_passes_with_the_ca_and_the_password(
    start_catcher: StartCatcher, certs: Certs, security: str
) -> None:
    catcher = start_catcher(security, credentials={"orion": PASSWORD})
    await sender(with_user(catcher.url, "orion"), smtp_ca_file=certs.ca, smtp_password=PASSWORD).check()
    assert catcher.messages == []  # it logs in and leaves: nothing sent


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_the_start_up_check_names_the_ca_when_it_does_not_vouch_for_the_server(
    start_catcher: StartCatcher, certs: Certs, security: str
) -> None:
    catcher = start_catcher(security)
    with pytest.raises(ValueError, match=r"ORION_SMTP_URL: .*certificate verification failed.*ORION_SMTP_CA_FILE"):
        await sender(catcher.url, smtp_ca_file=certs.other_ca).check()


async def test_the_start_up_check_names_the_password_when_the_login_is_refused(
    start_catcher: StartCatcher, certs: Certs
) -> None:
    catcher = start_catcher("starttls", credentials={"orion": PASSWORD})
    with pytest.raises(ValueError, match="ORION_SMTP_PASSWORD") as refused:
        await sender(with_user(catcher.url, "orion"), smtp_ca_file=certs.ca, smtp_password="not-it").check()
    assert "not-it" not in str(refused.value) and PASSWORD not in str(refused.value)


async def test_the_start_up_check_leaves_a_server_that_is_down_to_the_retries(
    certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    from orion_devstack.ports import free_port

    await sender(f"smtp://127.0.0.1:{free_port()}?starttls=true", smtp_ca_file=certs.ca).check()
    assert "not reachable at start" in caplog.text
