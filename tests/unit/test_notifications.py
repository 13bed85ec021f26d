"""Which emails events ask for, and how the dispatcher sends, retries and gives up."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, replace
from email.message import EmailMessage
from typing import Any

import pytest

from orion_streams.adapters.email import (
    Delivery,
    PermanentEmailError,
    RenderedEmail,
    TemporaryEmailError,
)
from orion_streams.adapters.notification_store import Claimed
from orion_streams.domain import notifications as n
from orion_streams.domain.events import LowStockDetected, OrderLineView, OrderStatusChanged
from orion_streams.domain.money import format_amount
from orion_streams.domain.orders import OrderStatus
from orion_streams.services.notifications import NotificationDispatcher

AT = "2026-11-25T10:00:00.000Z"


def changed(status: OrderStatus, reason: str | None = None) -> OrderStatusChanged:
    return OrderStatusChanged(
        order_id="0a1b2c3d-0000-4000-8000-000000000001", user_id="sarah", email="sarah@example.com",
        status=status, previous=None,
        lines=(OrderLineView("SKU-001", 2, 4999), OrderLineView("SKU-XYZ", 1, 1050)),
        total=11048, currency="EUR", failure_reason=reason, version=3, created_at=AT, at=AT,
    )


def names(sku: str) -> str | None:
    return {"SKU-001": "Wireless Mouse"}.get(sku)


# --- which email for which event --------------------------------------------------


@pytest.mark.parametrize(
    ("status", "template"),
    [
        (OrderStatus.PENDING, "order_received"),
        (OrderStatus.CONFIRMED, "order_processing"),
        (OrderStatus.FULFILLED, "order_fulfilled"),
        (OrderStatus.REJECTED, "order_failed"),
        (OrderStatus.PAYMENT_FAILED, "order_failed"),
        (OrderStatus.CANCELLED, "order_cancelled"),
    ],
)
def test_each_customer_visible_status_has_its_template(status: OrderStatus, template: str) -> None:
    note = n.for_status_change(changed(status), names, "cid-1")
    assert note is not None
    assert note.template == template
    assert note.recipients == ("sarah@example.com",)
    assert note.key == f"order:{changed(status).order_id}:{status.value}"
    assert note.correlation_id == "cid-1"
    assert note.order_id == changed(status).order_id


def test_reserved_is_internal_and_sends_nothing() -> None:
    assert n.for_status_change(changed(OrderStatus.RESERVED), names) is None


def test_an_order_without_an_email_address_sends_nothing() -> None:
    assert n.for_status_change(replace(changed(OrderStatus.PENDING), email=""), names) is None


def test_the_same_event_always_gives_the_same_key_and_id() -> None:
    a = n.for_status_change(changed(OrderStatus.CONFIRMED), names)
    b = n.for_status_change(replace(changed(OrderStatus.CONFIRMED), at="2026-11-26T00:00:00Z"), names)
    assert a is not None and b is not None
    assert (a.key, a.id) == (b.key, b.id)
    other = n.for_status_change(changed(OrderStatus.FULFILLED), names)
    assert other is not None and other.id != a.id


def test_context_carries_priced_lines_with_names_and_total() -> None:
    note = n.for_status_change(changed(OrderStatus.PENDING), names)
    assert note is not None
    order = note.context["order"]
    assert order["short_id"] == "0a1b2c3d"
    assert order["total"] == "110.48 EUR"
    assert order["lines"] == [
        {"sku": "SKU-001", "name": "Wireless Mouse", "quantity": 2, "unit_price": "49.99 EUR", "line_total": "99.98 EUR"},
        {"sku": "SKU-XYZ", "name": "SKU-XYZ", "quantity": 1, "unit_price": "10.50 EUR", "line_total": "10.50 EUR"},
    ]
    assert note.context["reason"] is None


@pytest.mark.parametrize(
    ("status", "raw", "expected"),
    [
        (OrderStatus.REJECTED, "SKU-003 out of stock", "no longer in stock (SKU-003 out of stock)"),
        (OrderStatus.PAYMENT_FAILED, "payment declined: insufficient funds", "declined (insufficient funds)"),
        (OrderStatus.PAYMENT_FAILED, "payment timed out", "did not answer in time"),
        (OrderStatus.CANCELLED, "customer request", "cancelled (customer request)"),
    ],
)
def test_failures_are_explained_in_plain_words(status: OrderStatus, raw: str, expected: str) -> None:
    note = n.for_status_change(changed(status, raw), names)
    assert note is not None
    assert expected in note.context["reason"]


def test_low_stock_alert_goes_to_admins_once_per_crossing() -> None:
    event = LowStockDetected("SKU-001", 4, 20, AT, version=17)
    note = n.for_low_stock(event, "Wireless Mouse", ("ops@orion.local", "mike@orion.local"))
    assert note is not None
    assert note.template == "low_stock"
    assert note.recipients == ("ops@orion.local", "mike@orion.local")
    assert note.key == "low-stock:SKU-001:17"
    assert note.context["stock"] == {"sku": "SKU-001", "name": "Wireless Mouse", "available": 4, "threshold": 20, "at": AT}
    later = n.for_low_stock(replace(event, version=30), None, ("ops@orion.local",))
    assert later is not None and later.key != note.key
    assert n.for_low_stock(event, None, ()) is None


def test_money_is_formatted_with_two_decimals() -> None:
    assert format_amount(0, "EUR") == "0.00 EUR"
    assert format_amount(5, "USD") == "0.05 USD"
    assert format_amount(123456789, "EUR") == "1,234,567.89 EUR"
    assert format_amount(-150, "EUR") == "-1.50 EUR"


# --- retry policy ---------------------------------------------------------------


def test_backoff_doubles_within_jitter_and_is_capped() -> None:
    policy = n.RetryPolicy(max_attempts=5, base=2.0, cap=10.0)
    assert [policy.delay(a, 0.999999) for a in (1, 2, 3)] == pytest.approx([2.0, 4.0, 8.0], rel=1e-5)
    assert [policy.delay(a, 0.0) for a in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert policy.delay(10, 0.999999) == pytest.approx(10.0, rel=1e-5)
    assert not policy.exhausted(4) and policy.exhausted(5)


# --- the dispatcher with fakes --------------------------------------------------


@dataclass
class Row:
    claimed: Claimed
    status: str = "queued"
    due: float = 0.0
    error: str | None = None
    server: str | None = None
    subject: str | None = None


class FakeQueue:
    """The notifications table in memory, with a clock the test moves."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.clock = 0.0
        self.delays: list[float] = []

    def add(self, id: str, template: str = "order_received") -> None:
        self.rows[id] = Row(Claimed(id, f"key-{id}", template, ("sarah@example.com",), {"x": 1},
                                    "order-1", None, "cid-9", 0))

    async def claim_due(self, limit: int, lease: float) -> list[Claimed]:
        out = []
        for row in self.rows.values():
            if row.status == "queued" and row.due <= self.clock and len(out) < limit:
                row.claimed = replace(row.claimed, attempts=row.claimed.attempts + 1)
                row.due = float("inf")  # leased
                out.append(row.claimed)
        return out

    async def mark_sent(self, id: str, *, server: str, message_id: str, subject: str) -> None:
        row = self.rows[id]
        row.status, row.server, row.subject, row.error = "sent", server, subject, None

    async def mark_retry(self, id: str, *, error: str, delay: float, server: str | None, subject: str | None) -> None:
        row = self.rows[id]
        row.due, row.error, row.server = self.clock + delay, error, server
        self.delays.append(delay)

    async def mark_failed(self, id: str, *, error: str, server: str | None, subject: str | None) -> None:
        row = self.rows[id]
        row.status, row.error, row.server = "failed", error, server


class FakeRenderer:
    def render(self, template: str, context: Mapping[str, Any]) -> RenderedEmail:
        if template == "broken":
            raise KeyError("no such template")
        return RenderedEmail(f"Subject of {template}", "text", "<p>html</p>")


class FakeMailer:
    """Answers from a script: an exception to raise or None to accept."""

    def __init__(self, *script: Exception | None) -> None:
        self.script = list(script)
        self.sent: list[EmailMessage] = []
        self.tried: list[EmailMessage] = []

    async def send(self, message: EmailMessage) -> Delivery:
        self.tried.append(message)
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        self.sent.append(message)
        return Delivery("smtp://primary:25", str(message["Message-ID"]))


def make(queue: FakeQueue, mailer: FakeMailer, dead: list[tuple[str, str]], attempts: int = 3) -> NotificationDispatcher:
    async def dead_letter(m: Claimed, reason: str) -> None:
        dead.append((m.id, reason))

    return NotificationDispatcher(
        queue, FakeRenderer(), mailer, sender="orders@orion.local",
        policy=n.RetryPolicy(max_attempts=attempts, base=1.0, cap=8.0), dead_letter=dead_letter,
        jitter=lambda: 0.999999,
    )


def temporary(text: str = "451 try later") -> TemporaryEmailError:
    return TemporaryEmailError(text, server="smtp://primary:25")


async def test_a_message_is_sent_with_tracking_headers() -> None:
    queue, mailer, dead = FakeQueue(), FakeMailer(), []
    queue.add("m1")
    assert await make(queue, mailer, dead).run_once() == 1
    assert queue.rows["m1"].status == "sent"
    assert queue.rows["m1"].server == "smtp://primary:25"
    assert queue.rows["m1"].subject == "Subject of order_received"
    msg = mailer.sent[0]
    assert msg["X-Correlation-ID"] == "cid-9"
    assert msg["X-Orion-Notification-Id"] == "m1"
    assert msg["Message-ID"] == "<m1@orion.local>"
    assert msg["To"] == "sarah@example.com"
    assert dead == []


async def test_temporary_failure_then_success_sends_exactly_once_with_one_message_id() -> None:
    queue, mailer, dead = FakeQueue(), FakeMailer(temporary(), temporary()), []
    queue.add("m1")
    dispatcher = make(queue, mailer, dead, attempts=5)
    await dispatcher.run_once()
    assert queue.rows["m1"].status == "queued" and "451" in (queue.rows["m1"].error or "")
    assert await dispatcher.run_once() == 0  # not due yet
    for _ in range(2):
        queue.clock += 100
        await dispatcher.run_once()
    assert queue.rows["m1"].status == "sent"
    assert len(mailer.sent) == 1 and len(mailer.tried) == 3
    assert len({m["Message-ID"] for m in mailer.tried}) == 1
    assert queue.delays == pytest.approx([1.0, 2.0], rel=1e-5)
    assert dead == []


async def test_temporary_failures_until_the_last_attempt_dead_letter_the_message() -> None:
    queue, mailer, dead = FakeQueue(), FakeMailer(*(temporary("connection refused") for _ in range(3))), []
    queue.add("m1")
    dispatcher = make(queue, mailer, dead, attempts=3)
    for _ in range(3):
        await dispatcher.run_once()
        queue.clock += 100
    assert queue.rows["m1"].status == "failed"
    assert "gave up after 3 attempts" in (queue.rows["m1"].error or "")
    assert dead == [("m1", queue.rows["m1"].error)]
    assert mailer.sent == []


async def test_a_permanent_failure_is_not_retried() -> None:
    queue, dead = FakeQueue(), []
    mailer = FakeMailer(PermanentEmailError("550 no such user", server="smtp://primary:25"))
    queue.add("m1")
    await make(queue, mailer, dead).run_once()
    assert queue.rows["m1"].status == "failed"
    assert len(mailer.tried) == 1 and dead and "550" in dead[0][1]


async def test_a_template_that_cannot_render_fails_without_sending() -> None:
    queue, mailer, dead = FakeQueue(), FakeMailer(), []
    queue.add("m1", template="broken")
    await make(queue, mailer, dead).run_once()
    assert queue.rows["m1"].status == "failed" and mailer.tried == []
    assert "cannot render broken" in dead[0][1]


async def test_a_slow_send_does_not_hold_up_other_messages() -> None:
    queue, dead = FakeQueue(), []
    release = asyncio.Event()

    class SlowFirst(FakeMailer):
        async def send(self, message: EmailMessage) -> Delivery:
            if message["X-Orion-Notification-Id"] == "slow":
                await release.wait()
            return await super().send(message)

    mailer = SlowFirst()
    queue.add("slow")
    dispatcher = make(queue, mailer, dead)
    runner = asyncio.ensure_future(dispatcher.run())
    try:
        async def sent(id: str) -> None:
            for _ in range(500):  # poll under the wait_for deadline
                if queue.rows[id].status == "sent":
                    return
                await asyncio.sleep(0.01)  # poll interval

        queue.add("fast")
        dispatcher.wake()
        await asyncio.wait_for(sent("fast"), 5)
        assert queue.rows["slow"].status == "queued"
        release.set()
        await asyncio.wait_for(sent("slow"), 5)
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def test_an_unsafe_correlation_id_is_left_out_and_the_email_still_goes() -> None:
    # Queued from an event whose correlation-id header smuggled a line break (before headers
    # were checked where they enter): the email goes without it, nothing is injected.
    queue, mailer, dead = FakeQueue(), FakeMailer(), []
    queue.add("m1")
    queue.rows["m1"].claimed = replace(queue.rows["m1"].claimed, correlation_id="cid\r\nBcc: evil@example.com")
    await make(queue, mailer, dead).run_once()
    assert queue.rows["m1"].status == "sent" and dead == []
    msg = mailer.sent[0]
    assert msg["X-Correlation-ID"] is None and msg["Bcc"] is None and "evil" not in msg.as_string()


async def test_an_email_that_cannot_be_composed_fails_once_with_a_dead_letter() -> None:
    queue, mailer, dead = FakeQueue(), FakeMailer(), []
    queue.add("m1")
    queue.rows["m1"].claimed = replace(queue.rows["m1"].claimed, recipients=("a@example.com\r\nBcc: evil@example.com",))
    dispatcher = make(queue, mailer, dead)
    await dispatcher.run_once()
    assert queue.rows["m1"].status == "failed" and mailer.tried == []
    assert len(dead) == 1 and dead[0][0] == "m1" and "cannot compose order_received" in dead[0][1]
    queue.clock += 1000
    assert await dispatcher.run_once() == 0  # given up on, not retried


# --- the mailer process's pieces ---------------------------------------------------


def test_dead_letter_record_names_the_email_and_why() -> None:
    import json

    from orion_streams.services.notifications import dead_letter_record

    claimed = Claimed("n1", "order:o1:PENDING", "order_received", ("a@x.test",), {}, "o1", None, "cid-3", 4)
    key, value, headers = dead_letter_record(claimed, "gave up after 4 attempts", AT)
    body = json.loads(value)
    assert key == b"o1"
    assert body["notification_id"] == "n1" and body["attempts"] == 4 and body["source_topic"] == "notifications"
    assert ("correlation-id", b"cid-3") in headers and ("reason", b"gave up after 4 attempts") in headers
    unsafe = replace(claimed, correlation_id="cid\nX: y")
    assert all(name != "correlation-id" for name, _ in dead_letter_record(unsafe, "x", AT)[2])


def test_the_mailer_listens_with_a_plain_asyncpg_dsn() -> None:
    from orion_streams.mailer import asyncpg_dsn

    assert asyncpg_dsn("postgresql+asyncpg://orion:s%40cret@127.0.0.1:5433/orion") == (
        "postgresql://orion:s%40cret@127.0.0.1:5433/orion"
    )
