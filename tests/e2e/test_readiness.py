"""`/ready` follows PostgreSQL: 503 naming it while it is down, 200 again once it is back,
while `/health` keeps answering."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ..integration.harness import Services, Worker, wait_until


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_ready_is_503_while_postgresql_is_down_and_200_when_it_is_back(fresh_services: Services) -> None:
    pg = fresh_services.postgres
    assert pg is not None
    worker = Worker(fresh_services, "ready").start()
    try:
        status, body = _get(f"{worker.url}/ready")
        assert (status, body["status"], body["admission"]["open"]) == (200, "ready", True), body
        pg.stop()
        try:
            seen: list[Any] = []

            def unready() -> bool:
                seen[:] = [_get(f"{worker.url}/ready")]
                return seen[0][0] == 503

            wait_until(unready, 30, "/ready to answer 503 without PostgreSQL")
            status, body = seen[0]
            assert body["status"] == "unavailable"
            assert any(m.startswith("postgresql") for m in body["missing"]), body
            assert not any(m.startswith("kafka") for m in body["missing"]), body
            assert _get(f"{worker.url}/health")[0] == 200
            # Requests that need the database are refused like any overload: 503 with
            # Retry-After and a problem body, never a 500 (once 192 of them in a 15 s outage).
            token = fresh_services.token("sarah")
            order = json.dumps({"lines": [{"sku": "SKU-001", "quantity": 1}], "payment": {"token": "tok_ok"},
                                "email": "sarah@example.com"}).encode()
            for method, path, body in (("POST", "/v1/orders", order), ("GET", "/v1/orders", None)):
                req = urllib.request.Request(f"{worker.url}{path}", data=body, method=method, headers={
                    "Authorization": f"Bearer {token}", "Content-Type": "application/json", "Idempotency-Key": "pg-down",
                })
                try:
                    urllib.request.urlopen(req, timeout=30)
                    raise AssertionError(f"{method} {path} answered 2xx without PostgreSQL")
                except urllib.error.HTTPError as exc:
                    assert exc.code == 503, (method, path, exc.code, exc.read())
                    assert exc.headers["Retry-After"] and exc.headers["Content-Type"] == "application/problem+json"
                    assert "database" in json.loads(exc.read())["detail"]
        finally:
            pg.start()
        wait_until(lambda: _get(f"{worker.url}/ready")[0] == 200, 60, "/ready to answer 200 again")
    finally:
        worker.stop()


def test_ready_is_503_until_the_tables_are_recovered(fresh_services: Services) -> None:
    first = Worker(fresh_services, "first").start()
    try:
        # A second worker joins: it answers /health at once, then waits for the group to
        # rebalance and recovers its share of the tables before it may take traffic.
        second = Worker(fresh_services, "second").start(until="alive")
        try:
            answers: list[tuple[int, Any]] = []

            def recovered() -> bool:
                answers.append(_get(f"{second.url}/ready"))
                return answers[-1][0] == 200

            wait_until(recovered, 90, "the second worker to be ready", interval=0.02)
            waiting = [body for status, body in answers if status == 503]
            assert waiting, f"never saw 503 before recovery: {answers[:3]}"
            assert (waiting[0]["status"], waiting[0]["missing"]) == ("unavailable", ["table recovery"])
            assert (answers[-1][0], answers[-1][1]["status"]) == (200, "ready")
            assert _get(f"{first.url}/ready")[0] == 200
        finally:
            second.stop()
    finally:
        first.stop()
