"""How Orion's Kafka clients connect, read from the ORION_KAFKA_* settings: the same for
aiokafka and Faust, and refused with the variable's name when it cannot work."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
from faust.auth import OAuthCredentials, SASLCredentials, SSLCredentials

from orion_devstack.certs import Certs, make_certs
from orion_streams.adapters import kafka_auth
from orion_streams.adapters.kafka_auth import KafkaSecurityError, TokenFromCommand, TokenFromFile
from orion_streams.config import Settings


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def settings(**changes: Any) -> Settings:
    return Settings(**changes)


def test_plaintext_is_the_default_and_has_no_credentials() -> None:
    assert kafka_auth.client_options(settings()) == {"security_protocol": "PLAINTEXT"}
    assert kafka_auth.faust_credentials(settings()) is None


def test_sasl_ssl_with_scram_checks_the_broker_against_the_ca(certs: Certs) -> None:
    given = settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="orion", kafka_sasl_password="pw", kafka_ssl_cafile=certs.ca)
    options = kafka_auth.client_options(given)
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("orion", "pw")
    context: ssl.SSLContext = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # the given CA, not the system's
    credentials = kafka_auth.faust_credentials(given)
    assert isinstance(credentials, SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.ssl_context is not None and credentials.password == "pw"


def test_mutual_tls_loads_the_client_certificate(certs: Certs) -> None:
    given = settings(kafka_security_protocol="SSL", kafka_ssl_cafile=certs.ca,
                     kafka_ssl_certfile=certs.client_cert, kafka_ssl_keyfile=certs.client_key)
    assert isinstance(kafka_auth.faust_credentials(given), SSLCredentials)
    assert "sasl_mechanism" not in kafka_auth.client_options(given)


def test_the_hostname_check_can_be_turned_off_but_the_chain_is_still_checked(certs: Certs) -> None:
    options = kafka_auth.client_options(
        settings(kafka_security_protocol="SSL", kafka_ssl_cafile=certs.ca, kafka_ssl_check_hostname=False))
    assert not options["ssl_context"].check_hostname and options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_sasl_plaintext_has_no_tls() -> None:
    options = kafka_auth.client_options(settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u", kafka_sasl_password="p"))
    assert "ssl_context" not in options and options["sasl_mechanism"] == "PLAIN"


def test_oauthbearer_takes_its_token_from_a_file_or_a_command(tmp_path: Path) -> None:
    token = tmp_path / "token"
    options = kafka_auth.client_options(settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="OAUTHBEARER", kafka_oauth_token_file=token))
    assert isinstance(options["sasl_oauth_token_provider"], TokenFromFile)
    given = settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="OAUTHBEARER",
                     kafka_oauth_token_command="echo t")
    assert isinstance(kafka_auth.client_options(given)["sasl_oauth_token_provider"], TokenFromCommand)
    assert isinstance(kafka_auth.faust_credentials(given), OAuthCredentials)


async def test_a_token_file_is_read_each_time_so_it_can_be_refreshed(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    provider = TokenFromFile(path)
    assert await provider.token() == "first"
    path.write_text("second")
    assert await provider.token() == "second"
    path.write_text("  \n")
    with pytest.raises(KafkaSecurityError, match="ORION_KAFKA_OAUTH_TOKEN_FILE: .* is empty"):
        await provider.token()


async def test_a_token_command_is_run_each_time_and_its_failure_is_named(tmp_path: Path) -> None:
    counter = tmp_path / "n"
    counter.write_text("0")
    script = f"{sys.executable} -c \"import pathlib; p=pathlib.Path('{counter}'); n=int(p.read_text())+1; p.write_text(str(n)); print('tok', n)\""
    provider = TokenFromCommand(script)
    assert await provider.token() == "tok 1"
    assert await provider.token() == "tok 2"
    with pytest.raises(KafkaSecurityError, match=r"ORION_KAFKA_OAUTH_TOKEN_COMMAND failed \(exit 3\): no idp"):
        await TokenFromCommand("echo no idp >&2; exit 3").token()
    with pytest.raises(KafkaSecurityError, match="printed no token"):
        await TokenFromCommand("true").token()


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs ORION_KAFKA_SASL_USERNAME and ORION_KAFKA_SASL_PASSWORD"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "OAUTHBEARER"},
         "needs one of ORION_KAFKA_OAUTH_TOKEN_FILE or ORION_KAFKA_OAUTH_TOKEN_COMMAND"),
        ({"kafka_sasl_username": "orion", "kafka_sasl_password": "pw"},
         "ORION_KAFKA_SASL_USERNAME, ORION_KAFKA_SASL_PASSWORD are set but ORION_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
        ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u", "kafka_sasl_password": "p",
          "kafka_ssl_cafile": "/ca.pem"}, "ORION_KAFKA_SSL_CAFILE is set but ORION_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nowhere/ca.pem"},
         "ORION_KAFKA_SSL_CAFILE: cannot use /nowhere/ca.pem: No such file"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "/k.pem"},
         "ORION_KAFKA_SSL_KEYFILE is set without ORION_KAFKA_SSL_CERTFILE"),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_variable(changes: dict[str, Any], says: str) -> None:
    with pytest.raises(KafkaSecurityError, match=says.replace("(", r"\(")):
        kafka_auth.client_options(settings(**changes))


def test_a_key_that_is_not_the_certificates_is_refused(certs: Certs) -> None:
    with pytest.raises(KafkaSecurityError, match="ORION_KAFKA_SSL_CERTFILE / ORION_KAFKA_SSL_KEYFILE: cannot use"):
        kafka_auth.client_options(settings(
            kafka_security_protocol="SSL", kafka_ssl_cafile=certs.ca,
            kafka_ssl_certfile=certs.client_cert, kafka_ssl_keyfile=certs.server_key))


def test_the_cli_stops_on_such_a_setting_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from orion_streams import cli

    monkeypatch.setenv("ORION_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.delenv("ORION_KAFKA_SASL_USERNAME", raising=False)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["topics"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("orion: ORION_KAFKA_SECURITY_PROTOCOL=SASL_SSL with PLAIN needs") and "Traceback" not in err
