"""Settings that are switches read true or false and refuse anything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from orion_streams.config import Settings


def test_payment_alongside_reservations_is_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORION_PAY_WITH_RESERVATION", raising=False)
    assert Settings.from_env().pay_with_reservation is True


@pytest.mark.parametrize(("text", "value"), [("false", False), ("0", False), ("Off", False), ("yes", True)])
def test_a_switch_reads_the_usual_words(monkeypatch: pytest.MonkeyPatch, text: str, value: bool) -> None:
    monkeypatch.setenv("ORION_PAY_WITH_RESERVATION", text)
    assert Settings.from_env().pay_with_reservation is value


def test_a_switch_refuses_other_words_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORION_PAY_WITH_RESERVATION", "sometimes")
    with pytest.raises(ValueError, match="ORION_PAY_WITH_RESERVATION must be true or false"):
        Settings.from_env()


def test_the_consumer_runs_on_the_workers_loop_unless_asked_for_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORION_CONSUMER_THREAD", raising=False)
    assert Settings.from_env().consumer_thread is False
    monkeypatch.setenv("ORION_CONSUMER_THREAD", "true")
    assert Settings.from_env().consumer_thread is True


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("ORION_PROJECTION", "sometimes", "ORION_PROJECTION: Input should be 'process', 'inline' or 'off', not 'sometimes'"),
        ("ORION_EVENT_LOOP", "trio", "ORION_EVENT_LOOP: Input should be 'uvloop' or 'asyncio'"),
        ("ORION_LOG_FORMAT", "xml", "ORION_LOG_FORMAT: Input should be 'json' or 'console'"),
        ("ORION_PAYMENT_GATEWAY", "stripe", "ORION_PAYMENT_GATEWAY: Input should be 'sandbox' or 'http'"),
        ("ORION_PARTITIONS", "0", "ORION_PARTITIONS: Input should be greater than or equal to 1"),
        ("ORION_WEB_PORT", "eighty", "ORION_WEB_PORT: Input should be a valid integer"),
    ],
)
def test_an_enumerated_or_typed_setting_refuses_other_values_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError) as err:
        Settings.from_env()
    assert says in str(err.value)


def test_settings_are_read_as_people_write_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ORION_ALERT_EMAILS", " ops@shop.example, ,buyers@shop.example ")
    monkeypatch.setenv("ORION_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("ORION_PROJECTION", "Inline")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORION_STATE_DIR", "state")
    settings = Settings.from_env()
    assert settings.alert_emails == ("ops@shop.example", "buyers@shop.example")
    assert (settings.log_level, settings.projection) == ("warning", "inline")
    assert settings.state_dir == tmp_path.resolve() / "state"


def test_keywords_win_over_the_environment_and_changes_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORION_PARTITIONS", "6")
    assert Settings().partitions == 6
    assert Settings(partitions=3).partitions == 3
    changed = Settings(partitions=3).with_changes(kafka_bootstrap="127.0.0.1:1")
    assert (changed.partitions, changed.kafka_bootstrap) == (3, "127.0.0.1:1")
    with pytest.raises(ValueError):
        Settings(partitions=3).with_changes(projection="sometimes")
    with pytest.raises(ValueError):
        Settings(no_such_setting=1)  # type: ignore[call-arg]
