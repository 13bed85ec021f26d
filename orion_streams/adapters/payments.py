"""Payment gateways: the sandbox of API.md, and an HTTP adapter for a real provider."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from ..domain import retry
from ..services.ports import PaymentError, PaymentPending, PaymentResult, VoidOutcome

log = logging.getLogger("orion.payments")


class SandboxPaymentGateway:
    """tok_ok approves, tok_declined declines, tok_timeout never answers, all else is invalid.

    Stateless: an authorisation id is derived from the payment key, so a void names the
    authorisation it voids and nothing is remembered (its memory stays flat however many
    orders it serves). A void by payment key alone finds nothing: the sandbox answers at
    once, so only a payment that never answered (tok_timeout) is voided that way."""

    @staticmethod
    def _authorization_id(payment_key: str) -> str:
        return "auth_" + hashlib.sha256(payment_key.encode()).hexdigest()[:16]

    async def authorize(
        self, *, amount: int, currency: str, token: str, idempotency_key: str
    ) -> PaymentResult:
        if token == "tok_ok":
            return PaymentResult(approved=True, authorization_id=self._authorization_id(idempotency_key))
        if token == "tok_declined":
            return PaymentResult(approved=False, reason="card declined")
        if token == "tok_timeout":
            await asyncio.Event().wait()  # never answers; the caller's deadline decides
        return PaymentResult(approved=False, reason="invalid payment token")

    async def void(self, *, authorization_id: str | None, payment_key: str) -> VoidOutcome:
        if authorization_id is not None and authorization_id == self._authorization_id(payment_key):
            return VoidOutcome.VOIDED
        return VoidOutcome.NOTHING

    async def refund(
        self, *, authorization_id: str | None, payment_key: str, amount: int, currency: str
    ) -> None:
        return None


def _sibling(url: str, name: str) -> str:
    """The provider URL next to `url`: .../authorize -> .../void."""
    parts = urlsplit(url)
    path = parts.path.rsplit("/", 1)[0] + "/" + name
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class HttpPaymentGateway:
    """A provider's HTTP API, every call with an Idempotency-Key so a retry never doubles it.

    - `POST url` `{amount, currency, token}` -> `{approved, authorization_id, reason}`;
      4xx is a decline, 409 means a request with the same key is still in progress.
    - `POST void_url` `{authorization_id, payment_key}` -> `{status: voided | captured |
      not_found}` (404 also means nothing to void); `authorization_id` may be null: the
      provider voids whatever the payment key authorised, now or when it completes.
    - `POST refund_url` `{authorization_id, payment_key, amount, currency}` -> 2xx.

    Each attempt is bounded by `attempt_timeout` (connecting by `connect_timeout`); 5xx,
    409 and network errors are retried with exponential backoff and jitter, then raised as
    PaymentError. The caller bounds the whole call (see services/payments.py).
    """

    def __init__(
        self,
        url: str,
        *,
        void_url: str | None = None,
        refund_url: str | None = None,
        api_key: str | None = None,
        attempt_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        attempts: int = 3,
        backoff: float = 0.2,
        max_backoff: float = 2.0,
    ) -> None:
        self.url = url
        self.void_url = void_url or _sibling(url, "void")
        self.refund_url = refund_url or _sibling(url, "refund")
        self.api_key = api_key
        self.timeout = aiohttp.ClientTimeout(total=attempt_timeout, connect=min(connect_timeout, attempt_timeout))
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
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
        body = {"amount": amount, "currency": currency, "token": token}
        status, data = await self._post(self.url, body, idempotency_key, final_4xx=True)
        if status < 300:
            if data.get("approved"):
                return PaymentResult(True, authorization_id=str(data.get("authorization_id", "")))
            return PaymentResult(False, reason=str(data.get("reason", "declined")))
        return PaymentResult(False, reason=f"provider refused ({status})")

    async def void(self, *, authorization_id: str | None, payment_key: str) -> VoidOutcome:
        body = {"authorization_id": authorization_id, "payment_key": payment_key}
        key = f"void:{payment_key}:{authorization_id or ''}"
        status, data = await self._post(self.void_url, body, key, final_4xx=False, not_found_ok=True)
        if status == 404:
            return VoidOutcome.NOTHING
        answer = str(data.get("status", "voided"))
        if answer == "not_found":
            return VoidOutcome.NOTHING
        if answer == "captured":
            return VoidOutcome.CAPTURED
        if answer != "voided":
            raise PaymentError(f"unexpected void answer {answer!r}")
        return VoidOutcome.VOIDED

    async def refund(
        self, *, authorization_id: str | None, payment_key: str, amount: int, currency: str
    ) -> None:
        body = {"authorization_id": authorization_id, "payment_key": payment_key, "amount": amount, "currency": currency}
        await self._post(self.refund_url, body, f"refund:{payment_key}", final_4xx=False)

    async def _post(
        self, url: str, body: dict[str, Any], key: str, *, final_4xx: bool, not_found_ok: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """POST with retries; returns (status, JSON body) of a final answer."""
        headers = {"Idempotency-Key": key}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: PaymentError = PaymentError("no attempt made")
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._client().post(url, json=body, headers=headers) as resp:
                    if resp.status < 300:
                        data = await resp.json(content_type=None)
                        return resp.status, data if isinstance(data, dict) else {}
                    if resp.status == 404 and not_found_ok:
                        return resp.status, {}
                    if resp.status == 409:
                        last = PaymentPending(f"provider busy with key {key} (409)")
                    elif resp.status < 500 and final_4xx:
                        return resp.status, {}
                    elif resp.status < 500:
                        raise PaymentError(f"provider refused ({resp.status})")
                    else:
                        last = PaymentError(f"provider error {resp.status}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                last = PaymentError(f"{type(exc).__name__}: {exc}")
            if attempt < self.attempts:
                delay = retry.spread(retry.ceiling(attempt, self.backoff, self.max_backoff), random.random())
                log.warning("payment call %s attempt %d failed (%s); retrying in %.2fs", url, attempt, last, delay)
                await asyncio.sleep(delay)  # backoff before the next attempt
        raise last
