"""Authorising within a budget, and voiding (or refunding) until the provider agrees."""

from __future__ import annotations

import asyncio

from orion_streams.domain import commands as c
from orion_streams.domain import events as e
from orion_streams.services import payments
from orion_streams.services.ports import PaymentError, PaymentPending, PaymentResult, VoidOutcome

PAY = c.AuthorizePayment("o1", 1_000, "EUR", "tok")


class FakeGateway:
    """Scripted answers; records every call."""

    def __init__(self, *, authorize: object = None, voids: list[object] | None = None, delay: float = 0.0) -> None:
        self.authorize_answer = authorize if authorize is not None else PaymentResult(True, "auth-1")
        self.voids = list(voids or [VoidOutcome.VOIDED])
        self.delay = delay
        self.calls: list[tuple[str, str | None, str]] = []

    async def authorize(self, *, amount: int, currency: str, token: str, idempotency_key: str) -> PaymentResult:
        self.calls.append(("authorize", None, idempotency_key))
        await asyncio.sleep(self.delay)
        if isinstance(self.authorize_answer, Exception):
            raise self.authorize_answer
        assert isinstance(self.authorize_answer, PaymentResult)
        return self.authorize_answer

    async def void(self, *, authorization_id: str | None, payment_key: str) -> VoidOutcome:
        self.calls.append(("void", authorization_id, payment_key))
        answer = self.voids.pop(0) if len(self.voids) > 1 else self.voids[0]
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, VoidOutcome)
        return answer

    async def refund(self, *, authorization_id: str | None, payment_key: str, amount: int, currency: str) -> None:
        self.calls.append(("refund", authorization_id, payment_key))


async def test_an_approval_and_a_decline() -> None:
    assert await payments.authorize(FakeGateway(), PAY, 1.0) == e.PaymentAuthorized("o1", "auth-1")
    declined = FakeGateway(authorize=PaymentResult(False, reason="card declined"))
    assert await payments.authorize(declined, PAY, 1.0) == e.PaymentDeclined("o1", "card declined")


async def test_the_budget_bounds_the_provider_not_the_queue() -> None:
    slow = FakeGateway(delay=5.0)
    outcome = await payments.authorize(slow, PAY, 0.05)
    assert outcome == e.PaymentTimedOut("o1", "payment timed out: the provider did not answer within 0.05s")


async def test_a_provider_that_is_down_gives_an_unknown_outcome() -> None:
    down = FakeGateway(authorize=PaymentError("provider error 503"))
    outcome = await payments.authorize(down, PAY, 1.0)
    assert isinstance(outcome, e.PaymentTimedOut) and "503" in outcome.reason


async def test_a_void_retries_while_the_authorisation_is_in_progress() -> None:
    gateway = FakeGateway(voids=[PaymentPending("busy"), PaymentError("502"), VoidOutcome.VOIDED])
    result = await payments.void(gateway, c.VoidPayment("o1", None, 1_000, "EUR"), 5.0, first_retry=0.01)
    assert result == e.PaymentVoided("o1", None, "voided")
    assert [call[0] for call in gateway.calls] == ["void", "void", "void"]


async def test_a_captured_payment_is_refunded() -> None:
    gateway = FakeGateway(voids=[VoidOutcome.CAPTURED])
    result = await payments.void(gateway, c.VoidPayment("o1", "auth-1", 1_000, "EUR"), 5.0)
    assert result == e.PaymentVoided("o1", "auth-1", "refunded")
    assert gateway.calls == [("void", "auth-1", "o1"), ("refund", "auth-1", "o1")]


async def test_a_void_gives_up_loudly_after_its_budget() -> None:
    gateway = FakeGateway(voids=[PaymentError("provider error 503")])
    result = await payments.void(gateway, c.VoidPayment("o1", "auth-1", 1_000, "EUR"), 0.2, first_retry=0.02)
    assert isinstance(result, e.PaymentVoidFailed) and "503" in result.reason
    assert len(gateway.calls) >= 2
