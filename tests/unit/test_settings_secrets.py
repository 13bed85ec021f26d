"""Secrets: read from ORION_<NAME>_FILE as container platforms mount them, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from orion_streams.config import DEV_JWT_SECRET, FROM_FILES, Settings


@pytest.mark.parametrize("name", FROM_FILES)
def test_each_secret_is_read_from_its_file_without_the_final_newline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    variable = f"ORION_{name.upper()}"
    monkeypatch.delenv(variable, raising=False)
    value = "smtp://relay.example:25" if "url" in name else "s3cret-" + "x" * 40
    if name == "database_url":
        value = "postgresql+asyncpg://orion:pw@db.example/orion"
    (tmp_path / "secret").write_text(value + "\n")
    monkeypatch.setenv(f"{variable}_FILE", str(tmp_path / "secret"))
    read = getattr(Settings.from_env(), name)
    assert (read.get_secret_value() if hasattr(read, "get_secret_value") else read) == value


def test_a_secret_set_twice_is_refused_naming_both_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-the-file")
    monkeypatch.setenv("ORION_KAFKA_SASL_PASSWORD", "from-the-environment")
    monkeypatch.setenv("ORION_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "secret"))
    with pytest.raises(ValueError, match="ORION_KAFKA_SASL_PASSWORD and ORION_KAFKA_SASL_PASSWORD_FILE are both set"):
        Settings.from_env()


def test_a_secret_file_that_cannot_be_read_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ORION_JWT_SECRET", raising=False)
    monkeypatch.setenv("ORION_JWT_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="ORION_JWT_SECRET_FILE: cannot read .*missing: No such file"):
        Settings.from_env()


def test_secrets_never_show_in_the_settings_text(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        jwt_secret="jwt-" + "y" * 40, kafka_sasl_password="kafka-pw", kafka_ssl_key_password="key-pw",
        database_password="db-pw", smtp_password="smtp-pw",
    )
    shown = repr(settings) + str(settings) + str(settings.model_dump())
    for secret in ("jwt-yyyy", "kafka-pw", "key-pw", "db-pw", "smtp-pw"):
        assert secret not in shown
    assert settings.kafka_sasl_password is not None and settings.kafka_sasl_password.get_secret_value() == "kafka-pw"


def test_a_child_process_reads_the_secrets_back(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(jwt_secret="jwt-" + "z" * 40, kafka_sasl_password="kafka-pw", kafka_security_protocol="SASL_SSL")
    for variable, value in settings.to_env().items():
        monkeypatch.setenv(variable, value)
    again = Settings.from_env()
    assert again.jwt_secret.get_secret_value() == "jwt-" + "z" * 40
    assert again.kafka_sasl_password is not None and again.kafka_sasl_password.get_secret_value() == "kafka-pw"
    assert again.kafka_security_protocol == "SASL_SSL"


def test_the_development_secret_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORION_JWT_SECRET", raising=False)
    monkeypatch.delenv("ORION_JWT_SECRET_FILE", raising=False)
    assert Settings.from_env().jwt_secret.get_secret_value() == DEV_JWT_SECRET


def test_a_mounted_secret_wins_over_an_empty_variable_of_the_same_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """docker-compose.secure.yml empties docker-compose.yml's ORION_JWT_SECRET and mounts
    the secret instead."""
    (tmp_path / "jwt").write_text("mounted-" + "m" * 40)
    monkeypatch.setenv("ORION_JWT_SECRET", "")
    monkeypatch.setenv("ORION_JWT_SECRET_FILE", str(tmp_path / "jwt"))
    assert Settings.from_env().jwt_secret.get_secret_value() == "mounted-" + "m" * 40
