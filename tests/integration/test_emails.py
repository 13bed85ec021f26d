"""Order emails through the whole pipeline: the worker sends to real SMTP servers (aiosmtpd)
that the tests start, stop and script; what arrives is parsed with the `email` package."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

from orion_devstack.smtp import MailCatcher
from orion_streams import records
from orion_streams.adapters.postgres import parse_time
from orion_streams.agents.common import partition_for

from .conftest import MailServers
from .harness import PARTITIONS, Api, Services, eventually, group_lag, produce, read_topic

FINAL = ("CONFIRMED", "FULFILLED", "REJECTED", "PAYMENT_FAILED", "CANCELLED")


def mails(mail: MailServers, *, order_id: str | None = None, sku: str | None = None,
          template: str | None = None) -> list[EmailMessage]:
    """Messages that arrived at either server for an order or SKU (and template)."""
    found = []
    for catcher in (mail.primary, mail.fallback):
        for msg in list(catcher.messages):
            if order_id is not None and msg["X-Orion-Order-Id"] != order_id:
                continue
            if sku is not None and msg["X-Orion-SKU"] != sku:
                continue
            if template is not None and msg["X-Orion-Template"] != template:
                continue
            found.append(msg)
    return found


async def arrived(mail: MailServers, count: int, timeout: float = 20, **match: Any) -> list[EmailMessage]:
    async def check() -> list[EmailMessage] | None:
        got = mails(mail, **match)
        return got if len(got) >= count else None

    return await eventually(check, timeout, f"{count} email(s) for {match}")


def parts(msg: EmailMessage) -> tuple[str, str]:
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None, "both a text and an HTML part"
    return text.get_content(), html.get_content()


def assert_lists_lines(msg: EmailMessage, order_id: str, sku: str, quantity: int) -> None:
    """An order email: both parts name the order, its line (name, SKU, prices) and total."""
    number = int(sku.split("-")[1])
    unit = f"{(1000 + number) / 100:.2f} EUR"
    total = f"{quantity * (1000 + number) / 100:.2f} EUR"
    assert msg["To"] == "sarah@example.com" and msg["From"] == "orders@orion.local"
    assert order_id[:8] in msg["Subject"]
    assert msg.get_content_type() == "multipart/alternative"
    text, html = parts(msg)
    for body in (text, html):
        assert order_id in body and f"Test product {number}" in body and sku in body
        assert unit in body and total in body
    assert "<table" in html and "style=" in html and "<style" not in html


async def order(api: Api, token: str, sku: str, quantity: int, payment: str = "tok_ok",
                correlation: str | None = None) -> str:
    headers = {"X-Correlation-ID": correlation} if correlation else None
    status, body, _ = await api.place(token, [{"sku": sku, "quantity": quantity}], payment, headers=headers)
    assert status == 202, body
    return str(body["order_id"])


async def notifications(api: Api, token: str, order_id: str) -> list[dict[str, Any]]:
    status, body, _ = await api.call("GET", f"/v1/orders/{order_id}/notifications", token)
    assert status == 200, body
    return list(body["items"])


async def row(api: Api, token: str, order_id: str, template: str, **want: Any) -> dict[str, Any]:
    """The order's notification for `template` once it has the wanted fields."""

    async def check() -> dict[str, Any] | None:
        for item in await notifications(api, token, order_id):
            if item["template"] == template and all(item[k] == v for k, v in want.items()):
                return item
        return None

    return await eventually(check, 30, f"{template} notification of {order_id} with {want}")


@contextmanager
def stopped(*catchers: MailCatcher) -> Iterator[None]:
    """SMTP servers down (connection refused) for a while, back up afterwards."""
    for catcher in catchers:
        catcher.stop()
    try:
        yield
    finally:
        for catcher in catchers:
            catcher.start()


async def test_a_confirmed_and_fulfilled_order_gets_three_emails(
    api: Api, customer: str, admin: str, fresh_sku: Any, mail: MailServers
) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 10)
    order_id = await order(api, customer, sku, 3, correlation="mail-corr-1")
    assert (await api.decided(customer, order_id))["status"] == "CONFIRMED"
    status, body, _ = await api.call(
        "POST", f"/v1/orders/{order_id}/fulfil", admin, headers={"X-Correlation-ID": "mail-corr-2"}
    )
    assert status in (200, 202), body

    got = await arrived(mail, 3, order_id=order_id)
    by_template = {m["X-Orion-Template"]: m for m in got}
    assert sorted(by_template) == ["order_fulfilled", "order_processing", "order_received"]
    assert len(got) == 3, [m["Subject"] for m in got]
    for template, msg in by_template.items():
        assert_lists_lines(msg, order_id, sku, 3)
        # each email carries the id of the request that caused it
        expected = "mail-corr-2" if template == "order_fulfilled" else "mail-corr-1"
        assert msg["X-Correlation-ID"] == expected, template
    assert "received" in by_template["order_received"]["Subject"].lower()

    sent = await notifications(api, customer, order_id)
    assert {n["template"]: n["status"] for n in sent} == {
        "order_received": "sent", "order_processing": "sent", "order_fulfilled": "sent",
    }
    for n in sent:
        assert n["attempts"] == 1
        assert n["server"] == f"smtp://{mail.primary.host}:{mail.primary.port}"
        assert n["message_id"] == by_template[n["template"]]["Message-ID"]
        assert n["recipient"] == "sarah@example.com"
        assert n["sent_at"] is not None


async def test_failed_and_cancelled_orders_are_told_why(
    api: Api, customer: str, admin: str, fresh_sku: Any, mail: MailServers
) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 2)
    declined = await order(api, customer, sku, 1, payment="tok_declined")
    rejected = await order(api, customer, sku, 5)
    cancelled = await order(api, customer, sku, 1)
    assert (await api.decided(customer, declined))["status"] == "PAYMENT_FAILED"
    assert (await api.decided(customer, rejected))["status"] == "REJECTED"
    await api.decided(customer, cancelled)
    status, body, _ = await api.call("POST", f"/v1/orders/{cancelled}/cancel", customer)
    assert status == 202, body

    (pay,) = await arrived(mail, 1, order_id=declined, template="order_failed")
    assert_lists_lines(pay, declined, sku, 1)
    text, html = parts(pay)
    assert "declined" in text and "declined" in html and "did not go through" in pay["Subject"]
    (rej,) = await arrived(mail, 1, order_id=rejected, template="order_failed")
    assert_lists_lines(rej, rejected, sku, 5)
    text, html = parts(rej)
    assert "no longer in stock" in text and "no longer in stock" in html
    (can,) = await arrived(mail, 1, order_id=cancelled, template="order_cancelled")
    assert_lists_lines(can, cancelled, sku, 1)
    assert "cancelled" in can["Subject"].lower()
    # every order also got its confirmation of receipt, and nothing else
    for order_id, count in ((declined, 2), (rejected, 2), (cancelled, 3)):
        assert len(await arrived(mail, count, order_id=order_id)) == count


async def test_the_same_status_event_delivered_twice_sends_one_email(
    api: Api, services: Services, customer: str, admin: str, fresh_sku: Any, mail: MailServers
) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 5)
    order_id = await order(api, customer, sku, 1)
    await api.decided(customer, order_id)
    await arrived(mail, 2, order_id=order_id)
    # Status changes travel in batch records: the record that carries the order's CONFIRMED,
    # delivered twice more (with whatever else it carries).
    def carries_confirmed(r: Any) -> bool:
        if records.BATCH_HEADER not in dict(r.headers):
            return False
        items = records.decode_batch(r.value)
        return any(key == order_id and value.get("status") == "CONFIRMED" for key, _, value in items)

    confirmed = [r for r in await read_topic(services.bootstrap, "order-status") if carries_confirmed(r)]
    assert len(confirmed) == 1
    for _ in range(2):
        await produce(services.bootstrap, "order-status", confirmed[0].key, confirmed[0].value,
                      headers=list(confirmed[0].headers), partition=confirmed[0].partition)
    partition = f"order-status[{partition_for(order_id, PARTITIONS)}]"

    async def consumed() -> bool:
        return partition not in await group_lag(services)

    await eventually(consumed, 30, f"the worker to consume {partition}")
    # the dispatcher is woken by new rows only; one poll round later nothing more may arrive
    await row(api, customer, order_id, "order_processing", status="sent")
    assert len(mails(mail, order_id=order_id, template="order_processing")) == 1
    assert len(await notifications(api, customer, order_id)) == 2


async def test_primary_down_sends_through_the_fallback(
    api: Api, customer: str, admin: str, fresh_sku: Any, mail: MailServers
) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 5)
    with stopped(mail.primary):
        order_id = await order(api, customer, sku, 1)
        await api.decided(customer, order_id)
        got = await arrived(mail, 2, order_id=order_id)
        assert all(m in mail.fallback.messages for m in got)
    fallback = f"smtp://{mail.fallback.host}:{mail.fallback.port}"
    for n in await notifications(api, customer, order_id):
        assert (n["status"], n["server"], n["attempts"]) == ("sent", fallback, 1)


async def test_both_servers_down_retries_then_dead_letters_and_an_admin_can_resend(
    api: Api, services: Services, customer: str, admin: str, fresh_sku: Any, mail: MailServers
) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 5)
    with stopped(mail.primary, mail.fallback):
        order_id = await order(api, customer, sku, 1, payment="tok_declined")
        failed = await row(api, customer, order_id, "order_received", status="failed")
        assert failed["attempts"] == 4  # ORION_EMAIL_MAX_ATTEMPTS in the session worker
        # backoff from 0.3 s, doubling, jitter in the upper half: at least 0.15 + 0.3 + 0.6 s
        spent = parse_time(failed["updated_at"]) - parse_time(failed["created_at"])
        assert spent.total_seconds() >= 1.05, spent
        assert "gave up after 4 attempts" in failed["last_error"]
        assert str(mail.primary.port) in failed["last_error"] and str(mail.fallback.port) in failed["last_error"]
        assert mails(mail, order_id=order_id) == []

        async def parked() -> list[dict[str, Any]]:
            records = await read_topic(services.bootstrap, "dead-letters")
            return [b for b in (json.loads(r.value) for r in records) if b.get("notification_id") == failed["id"]]

        (letter,) = await eventually(parked, 20, "the failed email in dead-letters")
        assert letter["source_topic"] == "notifications" and letter["attempts"] == 4
        assert letter["order_id"] == order_id and letter["template"] == "order_received"

    status, body, _ = await api.call("POST", f"/v1/notifications/{failed['id']}/retry", customer)
    assert status == 403, body
    status, body, _ = await api.call("POST", f"/v1/notifications/{failed['id']}/retry", admin)
    assert status == 202 and body["status"] == "queued", body
    await arrived(mail, 1, order_id=order_id, template="order_received")
    resent = await row(api, customer, order_id, "order_received", status="sent")
    assert resent["attempts"] == 1
    status, body, _ = await api.call("POST", f"/v1/notifications/{failed['id']}/retry", admin)
    assert status == 409, body
    status, body, _ = await api.call("POST", "/v1/notifications/no-such-id/retry", admin)
    assert status == 404, body


async def test_a_temporary_refusal_then_success_delivers_exactly_once(
    api: Api, customer: str, admin: str, fresh_sku: Any, mail: MailServers
) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 5)
    for catcher in (mail.primary, mail.fallback):
        catcher.refuse(-1, "451 4.3.0 Mailbox busy, try later")
    try:
        order_id = await order(api, customer, sku, 1, payment="tok_declined")
        async def tried_twice() -> dict[str, Any] | None:
            r = await row(api, customer, order_id, "order_received")
            return r if r["attempts"] >= 2 and r["status"] == "queued" else None

        retrying = await eventually(tried_twice, 20, "a second attempt")
        assert "451" in retrying["last_error"]
    finally:
        for catcher in (mail.primary, mail.fallback):
            catcher.accept_all()
    done = await row(api, customer, order_id, "order_received", status="sent")
    assert 2 <= done["attempts"] <= 4
    assert len(mails(mail, order_id=order_id, template="order_received")) == 1


async def test_low_stock_alerts_once_per_crossing(
    api: Api, services: Services, customer: str, admin: str, fresh_sku: Any, mail: MailServers
) -> None:
    sku = fresh_sku()
    status, body, _ = await api.call(
        "POST", f"/v1/inventory/{sku}/adjustments", admin,
        {"delta": 10, "reason": "restock", "low_stock_threshold": 3},
    )
    assert status == 200 and body["level"]["low_stock_threshold"] == 3, body
    first = await order(api, customer, sku, 7)  # available 3: at the threshold, low
    second = await order(api, customer, sku, 1)  # available 2: still low
    for order_id in (first, second):
        assert (await api.decided(customer, order_id))["status"] == "CONFIRMED"
    (alert,) = await arrived(mail, 1, sku=sku, template="low_stock")
    assert alert["To"] == "ops@orion.test"
    number = int(sku.split("-")[1])
    assert alert["Subject"] == f"Low stock: Test product {number} ({sku}) has 3 left"
    text, html = parts(alert)
    for body in (text, html):
        assert sku in body and f"Test product {number}" in body
    assert "Available:       3" in text and "Alert threshold: 3" in text
    partition = f"stock-levels[{partition_for(sku, PARTITIONS)}]"

    async def consumed() -> bool:
        return partition not in await group_lag(services)

    await eventually(consumed, 30, f"the worker to consume {partition}")
    status, rows, _ = await api.call("GET", f"/v1/inventory/{sku}", admin)
    assert rows["available"] == 2 and rows["low_stock"] is True
    assert len(mails(mail, sku=sku, template="low_stock")) == 1


HOSTILE = {
    "line breaks": b"x\r\nBcc: evil@example.com",
    "over-long": b"x" * 4000,
    "invalid UTF-8": b"\xff\xfe\xc3",
}


async def test_hostile_identity_headers_are_dropped_and_said_so_and_the_emails_still_go(
    api: Api, services: Services, customer: str, admin: str, fresh_sku: Any, mail: MailServers,
) -> None:
    # A producer's correlation-id, actor and actor-roles headers carrying what a hostile
    # producer would try; once the mailer could not compose such an order's emails at all.
    sku = fresh_sku()
    await api.restock(admin, sku, 10)
    orders = {}
    for kind, raw in HOSTILE.items():
        order_id = f"hostile-{uuid.uuid4().hex}"
        event_id = str(uuid.uuid4())
        body = {
            "type": "OrderPlaced", "event_id": event_id, "order_id": order_id, "user_id": "sarah",
            "email": "sarah@example.com", "lines": [{"sku": sku, "quantity": 1}], "payment": {"token": "tok_ok"},
        }
        await produce(services.bootstrap, "orders", order_id.encode(), json.dumps(body).encode(),
                      headers=[("correlation-id", raw), ("actor", raw), ("actor-roles", raw)])
        orders[kind] = (order_id, event_id)
    for kind, (order_id, event_id) in orders.items():
        order = await api.decided(customer, order_id)
        assert order["status"] == "CONFIRMED", (kind, order)
        _, trail, _ = await api.call("GET", f"/v1/orders/{order_id}/events", customer)
        placed = trail["items"][0]
        assert placed["type"] == "OrderPlaced"
        # the correlation id is replaced by the event's id, the actor recorded as unidentified
        assert placed["correlation_id"] == event_id and placed["actor"] == "external:unidentified"
        assert set(placed["data"]["headers_dropped"]) == {"correlation-id", "actor", "actor-roles"}, kind
        assert all(isinstance(reason, str) and reason for reason in placed["data"]["headers_dropped"].values())
        assert all(item["correlation_id"] == event_id for item in trail["items"])
        sent = [*await arrived(mail, 1, order_id=order_id, template="order_received"),
                *await arrived(mail, 1, order_id=order_id, template="order_processing")]
        for msg in sent:
            assert msg["X-Correlation-ID"] == event_id and msg["Bcc"] is None
            assert "evil@example.com" not in msg.as_string()
