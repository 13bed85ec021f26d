"""The HTTP payment gateway adapter against a real (local) HTTP provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from orion_streams.adapters.payments import HttpPaymentGateway, SandboxPaymentGateway
from orion_streams.services.ports import PaymentError, PaymentPending, VoidOutcome


class Provider:
    """A fake provider with scripted answers, recording what it was sent."""

    def __init__(self) -> None:
        self.script: list[tuple[int, Any]] = []
        self.seen: list[tuple[dict[str, Any], str | None]] = []
        self.paths: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((await request.json(), request.headers.get("Idempotency-Key")))
        self.paths.append(request.path)
        default = {"approved": True, "authorization_id": "a1"} if request.path == "/authorize" else {"status": "voided"}
        status, body = self.script.pop(0) if self.script else (200, default)
        return web.json_response(body, status=status)


@pytest.fixture
async def provider() -> AsyncIterator[tuple[Provider, str]]:
    fake = Provider()
    app = web.Application()
    for path in ("/authorize", "/void", "/refund"):
        app.router.add_post(path, fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield fake, f"http://127.0.0.1:{port}/authorize"
    finally:
        await runner.cleanup()


async def test_approval_carries_the_idempotency_key(provider: tuple[Provider, str]) -> None:
    fake, url = provider
    gateway = HttpPaymentGateway(url, backoff=0.01)
    try:
        result = await gateway.authorize(amount=1299, currency="EUR", token="tok_x", idempotency_key="order-1")
    finally:
        await gateway.close()
    assert result.approved and result.authorization_id == "a1"
    assert fake.seen == [({"amount": 1299, "currency": "EUR", "token": "tok_x"}, "order-1")]


async def test_provider_errors_are_retried_then_succeed(provider: tuple[Provider, str]) -> None:
    fake, url = provider
    fake.script = [(503, {}), (500, {}), (200, {"approved": True, "authorization_id": "a2"})]
    gateway = HttpPaymentGateway(url, attempts=3, backoff=0.01)
    try:
        result = await gateway.authorize(amount=1, currency="EUR", token="t", idempotency_key="order-2")
    finally:
        await gateway.close()
    assert result.authorization_id == "a2"
    assert [key for _, key in fake.seen] == ["order-2"] * 3  # the same key every time: no double charge


async def test_a_refusal_is_a_decline_and_not_retried(provider: tuple[Provider, str]) -> None:
    fake, url = provider
    fake.script = [(402, {"error": "card declined"})]
    gateway = HttpPaymentGateway(url, backoff=0.01)
    try:
        result = await gateway.authorize(amount=1, currency="EUR", token="t", idempotency_key="order-3")
    finally:
        await gateway.close()
    assert not result.approved and "402" in result.reason and len(fake.seen) == 1


async def test_a_provider_that_keeps_failing_raises(provider: tuple[Provider, str]) -> None:
    fake, url = provider
    fake.script = [(502, {})] * 3
    gateway = HttpPaymentGateway(url, attempts=3, backoff=0.01)
    try:
        with pytest.raises(PaymentError, match="502"):
            await gateway.authorize(amount=1, currency="EUR", token="t", idempotency_key="order-4")
    finally:
        await gateway.close()


async def test_void_and_refund_next_to_the_authorisation_url(provider: tuple[Provider, str]) -> None:
    fake, url = provider
    fake.script = [(409, {"status": "in_progress"}), (200, {"status": "voided"}),
                   (200, {"status": "captured"}), (200, {"status": "refunded"}), (404, {})]
    gateway = HttpPaymentGateway(url, attempts=2, backoff=0.01)
    try:
        assert await gateway.void(authorization_id=None, payment_key="order-5") is VoidOutcome.VOIDED
        assert await gateway.void(authorization_id="a1", payment_key="order-5") is VoidOutcome.CAPTURED
        await gateway.refund(authorization_id="a1", payment_key="order-5", amount=100, currency="EUR")
        assert await gateway.void(authorization_id="a9", payment_key="order-6") is VoidOutcome.NOTHING
    finally:
        await gateway.close()
    assert fake.paths == ["/void", "/void", "/void", "/refund", "/void"]
    assert fake.seen[0] == ({"authorization_id": None, "payment_key": "order-5"}, "void:order-5:")
    assert fake.seen[3] == ({"authorization_id": "a1", "payment_key": "order-5", "amount": 100, "currency": "EUR"},
                            "refund:order-5")


async def test_a_provider_busy_with_the_key_is_asked_again_then_reported(provider: tuple[Provider, str]) -> None:
    fake, url = provider
    fake.script = [(409, {})] * 2
    gateway = HttpPaymentGateway(url, attempts=2, backoff=0.01)
    try:
        with pytest.raises(PaymentPending):
            await gateway.void(authorization_id=None, payment_key="order-7")
    finally:
        await gateway.close()


async def test_sandbox_voids_the_authorisation_it_gave_and_remembers_nothing() -> None:
    sandbox = SandboxPaymentGateway()
    ok = await sandbox.authorize(amount=1, currency="EUR", token="tok_ok", idempotency_key="o1")
    assert await sandbox.void(authorization_id=ok.authorization_id, payment_key="o1") is VoidOutcome.VOIDED
    assert await sandbox.void(authorization_id=ok.authorization_id, payment_key="o2") is VoidOutcome.NOTHING
    # By payment key alone: the sandbox answers at once, so only tok_timeout gets here; nothing was authorised.
    assert await sandbox.void(authorization_id=None, payment_key="o1") is VoidOutcome.NOTHING
    assert vars(sandbox) == {}


async def test_sandbox_tokens() -> None:
    sandbox = SandboxPaymentGateway()
    ok = await sandbox.authorize(amount=1, currency="EUR", token="tok_ok", idempotency_key="o")
    again = await sandbox.authorize(amount=1, currency="EUR", token="tok_ok", idempotency_key="o")
    declined = await sandbox.authorize(amount=1, currency="EUR", token="tok_declined", idempotency_key="o")
    invalid = await sandbox.authorize(amount=1, currency="EUR", token="tok_what", idempotency_key="o")
    assert ok.approved and ok.authorization_id == again.authorization_id
    assert not declined.approved and declined.reason == "card declined"
    assert not invalid.approved and "invalid" in invalid.reason
