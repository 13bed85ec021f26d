"""Every client operation of a fault run, as the client saw it: ok, refused or unknown.

Load goes in from outside, the way shops send it: HTTP clients that retry a request whose
answer they never got with the same Idempotency-Key (on another worker when theirs died),
and a raw Kafka producer (acks=all, idempotent) that writes OrderPlaced with its own order
ids. What a client could not learn is recorded as `unknown`, never guessed.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer

OK, REFUSED, UNKNOWN, REJECTED = "ok", "refused", "unknown", "rejected"
Lines = tuple[tuple[str, int], ...]


@dataclass
class Op:
    """One order a client tried to place."""

    key: str  # the Idempotency-Key (HTTP) or the order id (Kafka)
    via: str  # "http" or "kafka"
    user: str
    lines: Lines
    card: str
    started: float = field(default_factory=time.monotonic)
    outcome: str = UNKNOWN
    order_id: str | None = None
    answers: list[str] = field(default_factory=list)  # every attempt's answer, for the report


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)  # faults as they happened

    def note(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    def by(self, outcome: str) -> list[Op]:
        return [op for op in self.ops if op.outcome == outcome]


class HttpClients:
    """Customers placing orders through whichever workers are up; each request is retried
    with its Idempotency-Key until it gets a definite answer or the client gives up."""

    def __init__(
        self,
        history: History,
        urls: Callable[[], Sequence[str]],
        tokens: Callable[[str], str],
        *,
        attempts: int = 8,
        timeout: float = 10.0,
    ) -> None:
        self.history = history
        self.urls = urls
        self.tokens = tokens
        self.attempts = attempts
        self.timeout = timeout

    async def place(
        self,
        session: aiohttp.ClientSession,
        user: str,
        lines: Lines,
        card: str = "tok_ok",
        key: str | None = None,
    ) -> Op:
        op = Op(key or f"k-{uuid.uuid4().hex}", "http", user, lines, card)
        self.history.ops.append(op)
        body = {
            "lines": [{"sku": s, "quantity": q} for s, q in lines],
            "payment": {"token": card},
            "email": f"{user}@example.com",
        }
        headers = {"Authorization": f"Bearer {self.tokens(user)}", "Idempotency-Key": op.key}
        delay = 0.2
        unanswered = refused = False
        for attempt in range(self.attempts):
            urls = list(self.urls())
            if not urls:
                op.answers.append("no worker up")
            else:
                url = urls[(hash(op.key) + attempt) % len(urls)]
                try:
                    async with session.post(
                        f"{url}/v1/orders",
                        json=body,
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(total=self.timeout),
                    ) as resp:
                        text = await resp.text()
                        op.answers.append(str(resp.status))
                        if resp.status in (200, 201, 202):
                            op.outcome, op.order_id = OK, json.loads(text)["order_id"]
                            return op
                        if resp.status in (429, 503):
                            # refused at the door: a real client waits Retry-After and tries again
                            refused = True
                            retry_after = float(resp.headers.get("Retry-After", "1"))
                            await asyncio.sleep(min(retry_after, 2.0) * (0.5 + random.random()))
                            continue
                        if 400 <= resp.status < 500:
                            op.answers.append(text[:200])
                            op.outcome = UNKNOWN if unanswered else REJECTED
                            return op
                except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                    # No answer: the order may or may not exist; only an answer to a retry
                    # with the same key can tell.
                    op.answers.append(type(exc).__name__)
                    unanswered = True
            await asyncio.sleep(delay)  # backoff before the next attempt
            delay = min(delay * 2, 3.0)
        # Refused every time it was answered: nothing was written. A request that got no
        # answer may still have been taken, so then the outcome is unknown.
        op.outcome = UNKNOWN if unanswered or not refused else REFUSED
        return op


class KafkaClient:
    """A shop's backend writing OrderPlaced straight to the `orders` topic."""

    def __init__(self, history: History, bootstrap: str) -> None:
        self.history = history
        self.bootstrap = bootstrap
        self.producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=15000,
        )
        await self.producer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    async def place(
        self, user: str, lines: Lines, card: str = "tok_ok", order_id: str | None = None
    ) -> Op:
        assert self.producer is not None
        order_id = order_id or f"kafka-{uuid.uuid4().hex}"
        op = Op(order_id, "kafka", user, lines, card, order_id=order_id)
        self.history.ops.append(op)
        value = placed(order_id, user, lines, card)
        try:
            await asyncio.wait_for(
                await self.producer.send(
                    "orders",
                    key=order_id.encode(),
                    value=value,
                    headers=[
                        ("correlation-id", order_id.encode()),
                        ("actor", f"service:{user}".encode()),
                    ],
                ),
                30,
            )
        except Exception as exc:  # noqa: BLE001 - any failure leaves the outcome unknown
            op.answers.append(type(exc).__name__)
            return op
        op.outcome = OK
        return op


def placed(order_id: str, user: str, lines: Lines, card: str) -> bytes:
    body: dict[str, Any] = {
        "type": "OrderPlaced",
        "event_id": str(uuid.uuid4()),
        "order_id": order_id,
        "user_id": user,
        "email": f"{user}@example.com",
        "lines": [{"sku": s, "quantity": q} for s, q in lines],
        "payment": {"token": card},
    }
    return json.dumps(body).encode()
