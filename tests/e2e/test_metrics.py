"""`/metrics` after a mixed run on a fresh stack equals what happened: orders by outcome,
decision times, reservations by SKU class, HTTP requests, emails (counted by the mailer,
a separate process sharing the worker's metrics directory), dead letters, low stock,
consumer lag, table recovery and database timings."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orion_devstack.ports import free_port
from orion_devstack.smtp import MailCatcher

from ..integration.harness import Api, Mailer, Services, Worker, eventually, produce

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the labelled series was never touched."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
def stack(fresh_services: Services, tmp_path: Any) -> Iterator[tuple[Worker, Mailer, MailCatcher]]:
    shared = tmp_path / "metrics"
    shared.mkdir()
    catcher = MailCatcher(tmp_path / "mail", port=free_port())
    catcher.start()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared), "ORION_SMTP_URL": f"smtp://{catcher.host}:{catcher.port}"}
    worker = Worker(fresh_services, "m", extra_env=env)
    mailer = Mailer(fresh_services, "m", extra_env=env)
    try:
        worker.start()
        mailer.start()
        yield worker, mailer, catcher
    finally:
        mailer.stop()
        worker.stop()
        catcher.stop()


async def test_metrics_after_a_mixed_run_equal_what_happened(
    fresh_services: Services, stack: tuple[Worker, Mailer, MailCatcher]
) -> None:
    worker, mailer, catcher = stack
    admin = fresh_services.token("mike", ("admin",))
    customer = fresh_services.token("sarah", ("customer",))
    async with aiohttp.ClientSession() as session:
        api = Api(worker.url, session)
        # SKU-001 is lighting, SKU-007 audio (see the demo catalog); SKU-007 starts low.
        await api.restock(admin, "SKU-001", 100)
        status, body, _ = await api.call(
            "POST", "/v1/inventory/SKU-007/adjustments", admin,
            {"delta": 5, "reason": "restock", "low_stock_threshold": 10},
        )
        assert status == 200, body
        before = scrape(worker.url)

        placed: dict[str, list[str]] = {"CONFIRMED": [], "REJECTED": [], "PAYMENT_FAILED": []}

        async def place(outcome: str, lines: list[tuple[str, int]], payment: str = "tok_ok") -> None:
            status, body, _ = await api.place(customer, [{"sku": s, "quantity": q} for s, q in lines], payment)
            assert status == 202, body
            placed[outcome].append(body["order_id"])

        for _ in range(2):
            await place("CONFIRMED", [("SKU-001", 1)])
            await place("CONFIRMED", [("SKU-001", 1), ("SKU-007", 1)])
            await place("REJECTED", [("SKU-007", 50)])
            await place("PAYMENT_FAILED", [("SKU-001", 1)], "tok_declined")
        await produce(fresh_services.bootstrap, "orders", b"not-an-order", b"{not json")

        for outcome, ids in placed.items():
            for order_id in ids:
                assert (await api.decided(customer, order_id))["status"] == outcome

    # 8 received, 4 processing, 4 failed: every email of the run is in.
    async def all_mail() -> bool:
        templates = [m["X-Orion-Template"] for m in list(catcher.messages) if m["X-Orion-Order-Id"]]
        return len(templates) >= 16

    await eventually(all_mail, 60, "the 16 order emails")

    async def settled() -> Samples | None:
        # The mailer counts a send after recording it, and lag falls once offsets are committed.
        now = scrape(worker.url)
        sent = sum(v for (n, labels), v in now.items() if n == "orion_emails_total" and ("outcome", "sent") in labels)
        lags = series(now, "orion_consumer_lag")
        return now if sent >= 16 and lags and not any(lags.values()) else None

    after = await eventually(settled, 60, "emails counted and no consumer lag")

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Orders, by the route in and by outcome.
    assert delta("orion_orders_accepted_total") == 8
    assert delta("orion_orders_placed_total") == 8
    assert delta("orion_orders_total", state="CONFIRMED") == 4
    assert delta("orion_orders_total", state="REJECTED") == 2
    assert delta("orion_orders_total", state="PAYMENT_FAILED") == 2
    assert delta("orion_orders_total", state="CANCELLED") == 0
    for outcome, count in (("CONFIRMED", 4), ("REJECTED", 2), ("PAYMENT_FAILED", 2)):
        assert delta("orion_order_decision_seconds_count", outcome=outcome) == count
        assert delta("orion_order_decision_seconds_sum", outcome=outcome) > 0
        assert delta("orion_order_decision_seconds_bucket", outcome=outcome, le="+Inf") == count
    assert delta("orion_order_confirmation_seconds_count") == 4
    assert delta("orion_order_confirmation_seconds_bucket", le="30.0") == 4  # nothing took half a minute

    # Reservations by SKU class: lighting 4 (confirmed) + 2 (payment failed), audio 2 and 2 refused.
    assert delta("orion_reservations_total", sku_class="lighting", outcome="accepted") == 6
    assert delta("orion_reservations_total", sku_class="audio", outcome="accepted") == 2
    assert delta("orion_reservations_total", sku_class="audio", outcome="rejected") == 2
    assert delta("orion_reservations_total", sku_class="lighting", outcome="rejected") == 0

    # HTTP, by route template: 8 orders accepted, histograms observed for each.
    assert delta("orion_http_requests_total", route="/v1/orders", method="POST", status="202") == 8
    assert delta("orion_http_request_duration_seconds_count", route="/v1/orders", method="POST") == 8
    assert value(after, "orion_http_requests_total", route="/v1/inventory/{sku}/adjustments", method="POST", status="200") == 2
    assert value(after, "orion_http_requests_total", route="/v1/orders/{order_id}", method="GET", status="200") >= 8

    # Emails, counted by the mailer process and summed into the worker's /metrics.
    assert delta("orion_emails_total", template="order_received", outcome="sent") == 8
    assert delta("orion_emails_total", template="order_processing", outcome="sent") == 4
    assert delta("orion_emails_total", template="order_failed", outcome="sent") == 4
    assert delta("orion_email_delivery_seconds_count", template="order_received") == 8
    assert not any(v for (n, labels), v in after.items() if n == "orion_emails_total" and ("outcome", "failed") in labels)

    # The one bad record, by reason class and topic.
    assert delta("orion_dead_letters_total", reason="bad_record", topic="orders") == 1
    assert sum(series(after, "orion_dead_letters_total").values()) == 1

    # Low stock: SKU-007 has 5 - 2 = 3 left (threshold 10); SKU-001 has 96 and is not listed.
    assert series(after, "orion_stock_available") == {(("sku", "SKU-007"),): 3.0}
    assert value(after, "orion_stock_low_threshold", sku="SKU-007") == 10
    assert delta("orion_low_stock_alerts_total") == 0  # it was low before the run started

    # Kafka: every orders partition is reported, with nothing left to process.
    lags = series(after, "orion_consumer_lag")
    assert {dict(labels)["partition"] for labels in lags if dict(labels)["topic"] == "orders"} == {"0", "1", "2", "3"}
    assert value(after, "orion_table_recovery_seconds_count") >= 1
    assert value(after, "orion_table_recovery_in_progress") == 0

    # PostgreSQL: statements timed by kind, the pools of both processes counted.
    assert delta("orion_db_query_duration_seconds_count", kind="insert") > 0
    assert delta("orion_db_query_duration_seconds_count", kind="select") > 0
    assert value(after, "orion_db_pool_size") >= 2
    assert sum(series(after, "orion_db_errors_total").values()) == 0

    # WebSockets: none open.
    assert value(after, "orion_websocket_connections") == 0

    # The mailer answers for itself too, from the same shared directory.
    mailer_view = scrape(mailer.url)
    assert value(mailer_view, "orion_emails_total", template="order_processing", outcome="sent") == 4
