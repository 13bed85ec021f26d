"""The HTTP payment gateway adapter against a real (local) HTTP provider."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from orion_streams.adapters.payments import HttpPaymentGateway, SandboxPaymentGateway
from orion_streams.services.ports import PaymentError


class Provider:
    """A fake provider with scripted answers, recording what it was sent."""

    def __init__(self) -> None:
        self.script: list[tuple[int, Any]] = []
        self.seen: list[tuple[dict[str, Any], str | None]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((await request.json(), request.headers.get("Idempotency-Key")))
        status, body = self.script.pop(0) if self.script else (200, {"approved": True, "authorization_id": "a1"})
        return web.json_response(body, status=status)


@pytest.fixture
async def provider() -> AsyncIterator[tuple[Provider, str]]:
    fake = Provider()
    app = web.Application()
    app.router.add_post("/authorize", fake.handle)
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


async def test_sandbox_tokens() -> None:
    sandbox = SandboxPaymentGateway()
    ok = await sandbox.authorize(amount=1, currency="EUR", token="tok_ok", idempotency_key="o")
    again = await sandbox.authorize(amount=1, currency="EUR", token="tok_ok", idempotency_key="o")
    declined = await sandbox.authorize(amount=1, currency="EUR", token="tok_declined", idempotency_key="o")
    invalid = await sandbox.authorize(amount=1, currency="EUR", token="tok_what", idempotency_key="o")
    assert ok.approved and ok.authorization_id == again.authorization_id
    assert not declined.approved and declined.reason == "card declined"
    assert not invalid.approved and "invalid" in invalid.reason
