"""Sending queued emails: claim due messages, render, send, record, retry or give up.

Runs in the mailer (`orion mailer`). Messages come from the notifications table (see
adapters/notification_store.py), so a retry waiting for its backoff holds nothing: other
orders' emails go out meanwhile, and a mailer that dies mid-send loses nothing (its lease
runs out and any mailer sends the message again, with the same Message-ID).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Protocol

from .. import logs, metrics, records, tracing
from ..adapters.email import (
    Delivery,
    PermanentEmailError,
    RenderedEmail,
    TemporaryEmailError,
    compose,
)
from ..adapters.notification_store import Claimed
from ..domain.notifications import RetryPolicy
from ..domain.retry import Backoff

log = logging.getLogger("orion.email")

EMAILS = metrics.EMAILS


class Renderer(Protocol):
    def render(self, template: str, context: Mapping[str, Any]) -> RenderedEmail: ...


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> Delivery: ...


class Queue(Protocol):
    async def claim_due(self, limit: int, lease: float) -> list[Claimed]: ...
    async def mark_sent(self, id: str, *, server: str, message_id: str, subject: str) -> None: ...
    async def mark_retry(
        self, id: str, *, error: str, delay: float, server: str | None, subject: str | None
    ) -> None: ...
    async def mark_failed(self, id: str, *, error: str, server: str | None, subject: str | None) -> None: ...


DeadLetter = Callable[[Claimed, str], Awaitable[None]]


def dead_letter_record(message: Claimed, reason: str, at: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of the `dead-letters` record for an email given up on."""
    details = {
        "notification_id": message.id,
        "idempotency_key": message.key,
        "template": message.template,
        "recipients": list(message.recipients),
        "order_id": message.order_id,
        "sku": message.sku,
        "attempts": message.attempts,
    }
    correlation = message.correlation_id
    checked = correlation if correlation and records.CORRELATION_ID.fullmatch(correlation) else None
    value, headers = records.dead_letter(reason, "email_failed", "notifications", at, details, correlation_id=checked)
    return (message.order_id or message.sku or message.id).encode(), value, headers


class NotificationDispatcher:
    """Sends due messages, at most `concurrency` at once; `wake()` when new ones are queued."""

    def __init__(
        self,
        queue: Queue,
        renderer: Renderer,
        mailer: Mailer,
        *,
        sender: str,
        policy: RetryPolicy,
        dead_letter: DeadLetter,
        concurrency: int = 4,
        lease: float = 120.0,
        poll: float = 1.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.queue = queue
        self.renderer = renderer
        self.mailer = mailer
        self.sender = sender
        self.policy = policy
        self.dead_letter = dead_letter
        self.concurrency = concurrency
        self.lease = lease
        self.poll = poll
        self.jitter = jitter
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Forever: claim what is due into free slots, then wait for a wake-up or the poll."""
        backoff = Backoff(0.5, 10.0)
        try:
            while True:
                self._wake.clear()
                free = self.concurrency - len(self._inflight)
                claimed: list[Claimed] = []
                if free > 0:
                    try:
                        claimed = await self.queue.claim_due(free, self.lease)
                        backoff.reset()
                    except Exception as exc:  # PostgreSQL away: rows wait in the table
                        pause = backoff.next()
                        log.warning("could not claim emails: %s; again in %.1fs", exc, pause)
                        await asyncio.sleep(pause)  # backoff while the database is away
                        continue
                for message in claimed:
                    task = asyncio.ensure_future(self.deliver(message))
                    self._inflight.add(task)
                    task.add_done_callback(self._done)
                if claimed and len(claimed) == free:
                    continue  # there may be more due
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll):
                        await self._wake.wait()
        finally:
            for task in list(self._inflight):
                task.cancel()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()

    async def run_once(self) -> int:
        """Claim and send whatever is due now, and wait for those sends (tests, tools)."""
        claimed = await self.queue.claim_due(self.concurrency, self.lease)
        await asyncio.gather(*(self.deliver(m) for m in claimed))
        return len(claimed)

    async def deliver(self, message: Claimed) -> None:
        """One attempt at one message; every outcome is recorded."""
        m = message
        try:
            with (
                logs.bound(correlation_id=m.correlation_id, order_id=m.order_id, sku=m.sku, notification_id=m.id),
                tracing.span("email send", "client", attributes={"orion.template": m.template, "orion.attempt": m.attempts}),
            ):
                await self._deliver(message)
        except Exception:  # a database error while recording: the lease runs out, it is retried
            log.exception("email %s (%s): could not record the outcome", message.id, message.template)

    async def _deliver(self, m: Claimed) -> None:
        try:
            rendered = self.renderer.render(m.template, m.context)
        except Exception as exc:  # a template bug never fixes itself by retrying
            await self._give_up(m, f"cannot render {m.template}: {exc}", None, None)
            return
        # One Message-ID per message for every attempt, so a resend after a crash mid-send
        # is recognised as the same email by mail clients.
        message_id = f"<{m.id}@{self.sender.rpartition('@')[2] or 'orion.local'}>"
        headers = {"X-Orion-Notification-Id": m.id, "X-Orion-Template": m.template}
        if m.correlation_id and records.CORRELATION_ID.fullmatch(m.correlation_id):
            headers["X-Correlation-ID"] = m.correlation_id  # one queued before headers were checked is left out
        if m.order_id:
            headers["X-Orion-Order-Id"] = m.order_id
        if m.sku:
            headers["X-Orion-SKU"] = m.sku
        try:
            email = compose(rendered, sender=self.sender, to=m.recipients, message_id=message_id, headers=headers)
        except Exception as exc:  # an email that cannot be built never builds on a retry either
            await self._give_up(m, f"cannot compose {m.template}: {exc}", None, rendered.subject)
            return
        try:
            delivery = await self.mailer.send(email)
        except PermanentEmailError as exc:
            await self._give_up(m, str(exc), exc.server, rendered.subject)
        except (TemporaryEmailError, OSError, TimeoutError) as exc:
            server = getattr(exc, "server", None)
            if self.policy.exhausted(m.attempts):
                await self._give_up(m, f"gave up after {m.attempts} attempts: {exc}", server, rendered.subject)
                return
            delay = self.policy.delay(m.attempts, self.jitter())
            EMAILS.labels(m.template, "retried").inc()
            log.warning("email %s (%s) attempt %d failed: %s; retrying in %.1fs", m.id, m.template, m.attempts, exc, delay)
            await self.queue.mark_retry(m.id, error=str(exc), delay=delay, server=server, subject=rendered.subject)
        else:
            await self.queue.mark_sent(m.id, server=delivery.server, message_id=message_id, subject=rendered.subject)
            EMAILS.labels(m.template, "sent").inc()
            if m.created_at is not None:
                metrics.EMAIL_QUEUE_AGE.labels(m.template).observe(
                    max(0.0, (datetime.now(UTC) - m.created_at).total_seconds())
                )
            log.info("email %s (%s) sent to %d recipient(s) via %s", m.id, m.template, len(m.recipients), delivery.server)

    async def _give_up(self, m: Claimed, error: str, server: str | None, subject: str | None) -> None:
        # Dead letter first: if recording fails after it, the lease runs out, the message is
        # claimed again, gives up again and is dead-lettered twice rather than never.
        await self.dead_letter(m, error)
        await self.queue.mark_failed(m.id, error=error, server=server, subject=subject)
        EMAILS.labels(m.template, "failed").inc()
        metrics.DEAD_LETTERS.labels("email_failed", "notifications").inc()
        log.error("email %s (%s) failed: %s", m.id, m.template, error)
