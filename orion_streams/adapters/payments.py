"""Payment gateways: the sandbox of API.md, and an HTTP adapter for a real provider."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random

import aiohttp

from ..services.ports import PaymentError, PaymentResult

log = logging.getLogger("orion.payments")


class SandboxPaymentGateway:
    """tok_ok approves, tok_declined declines, tok_timeout never answers, all else is invalid."""

    async def authorize(
        self, *, amount: int, currency: str, token: str, idempotency_key: str
    ) -> PaymentResult:
        if token == "tok_ok":
            digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]
            return PaymentResult(approved=True, authorization_id=f"auth_{digest}")
        if token == "tok_declined":
            return PaymentResult(approved=False, reason="card declined")
        if token == "tok_timeout":
            await asyncio.Event().wait()  # never answers; the caller's deadline decides
        return PaymentResult(approved=False, reason="invalid payment token")


class HttpPaymentGateway:
    """POSTs {amount, currency, token} to a provider's authorisation URL.

    The provider is asked with an Idempotency-Key, so retrying after a timeout or a 5xx
    can never charge twice. 4xx answers are final declines; 5xx and network errors are
    retried with exponential backoff and jitter, then raised as PaymentError.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 5.0,
        attempts: int = 3,
        backoff: float = 0.2,
    ) -> None:
        self.url = url
        self.api_key = api_key
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.attempts = attempts
        self.backoff = backoff
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def authorize(
        self, *, amount: int, currency: str, token: str, idempotency_key: str
    ) -> PaymentResult:
        headers = {"Idempotency-Key": idempotency_key}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = {"amount": amount, "currency": currency, "token": token}
        last_error = "no attempt made"
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._client().post(self.url, json=body, headers=headers) as resp:
                    if resp.status < 300:
                        data = await resp.json()
                        if data.get("approved"):
                            return PaymentResult(True, authorization_id=str(data.get("authorization_id", "")))
                        return PaymentResult(False, reason=str(data.get("reason", "declined")))
                    if resp.status < 500:
                        return PaymentResult(False, reason=f"provider refused ({resp.status})")
                    last_error = f"provider error {resp.status}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if attempt < self.attempts:
                delay = self.backoff * 2 ** (attempt - 1) * (0.5 + random.random())
                log.warning("payment attempt %d failed (%s); retrying in %.2fs", attempt, last_error, delay)
                await asyncio.sleep(delay)
        raise PaymentError(last_error)
