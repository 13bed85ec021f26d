"""The mailer's SMTP sender built from settings: where the password comes from, AUTH only
over TLS unless allowed, the CA trusted; every mistake named by its setting at start-up,
never with the password in it."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from orion_devstack.certs import make_certs
from orion_streams.adapters.email import SmtpSender
from orion_streams.config import Settings

PASSWORD = "pw-Zq8!rX2@relay"


@pytest.fixture(autouse=True)
def _no_smtp_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: none of the runner's ORION_SMTP_* leak in."""
    for variable in list(os.environ):
        if variable.startswith("ORION_SMTP_"):
            monkeypatch.delenv(variable)


def built(**settings: object) -> SmtpSender:
    return SmtpSender.from_settings(Settings(**settings))  # type: ignore[arg-type]


def test_the_password_comes_from_orion_smtp_password_when_the_url_has_none() -> None:
    mailer = built(
        smtp_url="smtps://relay@mail.example.com",
        smtp_password=PASSWORD,
        smtp_fallback_url="smtps://backup@backup.example.com",
    )
    assert mailer.primary.username == "relay" and mailer.primary.password == PASSWORD
    # ORION_SMTP_PASSWORD is ORION_SMTP_URL's: a fallback keeps its password in its URL.
    assert mailer.fallback is not None and mailer.fallback.password is None
    assert PASSWORD not in repr(mailer.primary)


def test_the_url_keeps_its_own_password_when_orion_smtp_password_is_unset() -> None:
    mailer = built(smtp_url="smtp://relay:url-pw@mail.example.com?starttls=true")
    assert mailer.primary.password == "url-pw"


def test_a_password_in_both_the_url_and_orion_smtp_password_is_refused_naming_both() -> None:
    with pytest.raises(ValueError) as caught:
        built(smtp_url="smtps://relay:url-pw@mail.example.com", smtp_password=PASSWORD)
    message = str(caught.value)
    assert "ORION_SMTP_URL" in message and "ORION_SMTP_PASSWORD" in message
    assert "url-pw" not in message and PASSWORD not in message


def test_orion_smtp_password_without_a_user_in_the_url_is_refused() -> None:
    with pytest.raises(ValueError, match="ORION_SMTP_PASSWORD is set but ORION_SMTP_URL has no user"):
        built(smtp_url="smtps://mail.example.com", smtp_password=PASSWORD)


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({"smtp_url": f"smtp://relay:{PASSWORD}@mail.example.com"}, "ORION_SMTP_URL"),
        ({"smtp_url": "smtp://relay@mail.example.com", "smtp_password": PASSWORD}, "ORION_SMTP_URL"),
        (
            {"smtp_url": "smtps://mail.example.com", "smtp_fallback_url": "smtp://backup:pw@backup.example.com:25"},
            "ORION_SMTP_FALLBACK_URL",
        ),
    ],
)
def test_auth_in_clear_is_refused_naming_the_url_and_the_setting_that_allows_it(
    settings: dict[str, str], variable: str
) -> None:
    with pytest.raises(ValueError) as caught:
        built(**settings)
    message = str(caught.value)
    assert message.startswith(f"{variable} logs in to smtp://")
    assert "without TLS" in message and "ORION_SMTP_ALLOW_PLAIN_AUTH=true" in message
    assert PASSWORD not in message and ":pw@" not in message


def test_auth_in_clear_is_allowed_when_orion_smtp_allow_plain_auth_is_true() -> None:
    mailer = built(smtp_url="smtp://relay@127.0.0.1:1025", smtp_password=PASSWORD, smtp_allow_plain_auth=True)
    assert mailer.primary.security == "none" and mailer.primary.password == PASSWORD


@pytest.mark.parametrize(
    "url",
    ["smtp://127.0.0.1:1025", "smtp://relay:pw@mail.example.com?starttls=true", "smtps://relay:pw@mail.example.com"],
)
def test_no_permission_is_needed_without_a_user_or_over_tls(url: str) -> None:
    """The development default (a local catcher, no user) keeps working as it did."""
    assert built(smtp_url=url).primary.host in ("127.0.0.1", "mail.example.com")


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"smtp_url": f"http://relay:{PASSWORD}@mail.example.com"}, r"^ORION_SMTP_URL: invalid SMTP URL 'http://relay:\*\*\*@"),
        ({"smtp_fallback_url": "smtps://mail.example.com:0"}, r"^ORION_SMTP_FALLBACK_URL: invalid SMTP URL .*bad port"),
    ],
)
def test_a_bad_smtp_url_is_named_by_its_variable(settings: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match) as caught:
        built(**settings)
    assert PASSWORD not in str(caught.value)


def test_tls_checks_the_certificate_and_host_name_against_orion_smtp_ca_file(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    mailer = built(smtp_url="smtps://mail.example.com", smtp_ca_file=certs.ca)
    context = mailer.tls_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True
    trusted = [dict(field for rdn in ca["subject"] for field in rdn) for ca in context.get_ca_certs()]
    assert trusted == [{"organizationName": "Orion local stack", "commonName": "Orion local CA"}]


def test_without_orion_smtp_ca_file_tls_still_checks_certificates() -> None:
    context = built(smtp_url="smtps://mail.example.com").tls_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True


@pytest.mark.parametrize(
    ("content", "reason"), [(None, "No such file or directory"), ("not a certificate\n", "no certificate or crl found")]
)
def test_a_ca_file_that_cannot_be_loaded_stops_start_up_naming_orion_smtp_ca_file(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_text(content)
    with pytest.raises(ValueError) as caught:
        built(smtp_url="smtps://mail.example.com", smtp_ca_file=ca_file)
    assert str(caught.value) == f"ORION_SMTP_CA_FILE: cannot load CA certificates from {ca_file}: {reason}"


def test_a_mailer_with_a_password_to_send_in_clear_stops_naming_the_settings(tmp_path: Path) -> None:
    """`orion mailer` checks its SMTP settings before anything else: a message, not a traceback."""
    (tmp_path / "password").write_text(PASSWORD + "\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ORION_")},
        "ORION_DATABASE_URL": "postgresql+asyncpg://orion@127.0.0.1:9/orion",
        "ORION_SMTP_URL": "smtp://relay@127.0.0.1:2525",
        "ORION_SMTP_PASSWORD_FILE": str(tmp_path / "password"),
        "ORION_STATE_DIR": str(tmp_path / "state"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "orion_streams.cli", "mailer"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "orion mailer: ORION_SMTP_URL logs in to smtp://127.0.0.1:2525 without TLS, which would send the "
        "password in clear: use smtps:// or ?starttls=true, or set ORION_SMTP_ALLOW_PLAIN_AUTH=true if the "
        "network is trusted"
    )
    assert "Traceback" not in result.stderr and PASSWORD not in result.stderr + result.stdout
