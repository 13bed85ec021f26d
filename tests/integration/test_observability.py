"""One order followed by its correlation id: the HTTP response, a log line from every step
(web, saga, reservation, payment, projection, email queue, mailer), the audit trail and
the email headers; and no token in any log line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .conftest import MailServers
from .harness import Api, Services, Worker, eventually, new_id


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a process's log; each one must be a JSON object."""
    out = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{path.name}:{number} is not a JSON line: {line[:300]!r}") from None
        assert isinstance(record, dict), line
        out.append(record)
    return out


# Where each step logs from: (process, logger) -> what the line must mention.
STEPS = {
    ("worker", "orion.orders"): "order accepted",
    ("worker", "orion.saga"): "CONFIRMED",
    ("worker", "orion.reservation"): "reserved",
    ("worker", "orion.payment"): "payment authorised",
    ("worker", "orion.projection"): "stored order status",
    ("worker", "orion.email"): "queued",
    ("mailer", "orion.email"): "sent",
}


async def test_one_orders_correlation_id_is_in_its_response_logs_audit_and_emails(
    api: Api, worker: Worker, services: Services, mail: MailServers, admin: str, customer: str, fresh_sku: Any
) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 10)
    cid = f"trace-{new_id()}"
    status, body, headers = await api.place(customer, [{"sku": sku, "quantity": 2}], headers={"X-Correlation-ID": cid})
    assert status == 202, body
    assert headers["X-Correlation-ID"] == cid
    order_id = body["order_id"]
    assert (await api.decided(customer, order_id))["status"] == "CONFIRMED"

    # The emails of both stages carry it.
    async def emails() -> list[Any] | None:
        got = [m for c in (mail.primary, mail.fallback) for m in list(c.messages) if m["X-Orion-Order-Id"] == order_id]
        return got if {m["X-Orion-Template"] for m in got} >= {"order_received", "order_processing"} else None

    for msg in await eventually(emails, 30, "the received and processing emails"):
        assert msg["X-Correlation-ID"] == cid, msg["X-Orion-Template"]

    # Every audit row carries it.
    status, events, _ = await api.call("GET", f"/v1/orders/{order_id}/events", customer)
    assert status == 200, events
    assert len(events["items"]) >= 3
    assert {item["correlation_id"] for item in events["items"]} == {cid}

    # A line from every step carries it (the mailer logs once the email is recorded as sent).
    mailer_log = services.state_dir / "mailer-a" / "mailer.log"
    logs = {"worker": worker.log_path, "mailer": mailer_log}

    def steps_seen() -> dict[tuple[str, str], list[dict[str, Any]]] | None:
        seen: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for process, path in logs.items():
            for line in json_lines(path):
                if line.get("correlation_id") == cid:
                    seen.setdefault((process, line["logger"]), []).append(line)
        missing = [step for step, words in STEPS.items() if not any(words in r["message"] for r in seen.get(step, []))]
        return None if missing else seen

    async def check() -> dict[tuple[str, str], list[dict[str, Any]]] | None:
        return steps_seen()

    seen = await eventually(check, 30, f"log lines with {cid} from every step")
    for (process, _), lines in seen.items():
        for line in lines:
            assert line["level"] in {"debug", "info", "warning", "error"} and line["ts"].endswith("Z")
            assert line["worker_id"] == ("a" if process == "worker" else "mailer-a"), line
    # The request line names the route template, the status and the time taken.
    requests = [r for r in seen[("worker", "orion.web")] if r.get("route") == "/v1/orders"]
    assert requests and requests[0]["http_status"] == 202 and requests[0]["duration_ms"] > 0
    # Lines about the order name it; the reservation's name the SKU too.
    assert all(r.get("order_id") == order_id for r in seen[("worker", "orion.saga")])
    assert all(r.get("sku") == sku for r in seen[("worker", "orion.reservation")])

    # Every line that names the order carries its correlation id.
    for process, path in logs.items():
        for line in json_lines(path):
            if line.get("order_id") == order_id:
                assert line.get("correlation_id") == cid, (process, line)

    # Tokens never reach a log line, although every request above carried one.
    for path in logs.values():
        text = path.read_text(errors="replace")
        assert customer not in text and admin not in text
        assert customer.split(".")[2] not in text  # not even the signature
