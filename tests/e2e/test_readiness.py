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
        assert _get(f"{worker.url}/ready") == (200, {"status": "ready"})
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
        finally:
            pg.start()
        wait_until(lambda: _get(f"{worker.url}/ready")[0] == 200, 60, "/ready to answer 200 again")
    finally:
        worker.stop()
