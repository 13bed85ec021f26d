"""Settings that are switches read true or false and refuse anything else."""

from __future__ import annotations

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
