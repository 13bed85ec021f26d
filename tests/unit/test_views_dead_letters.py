"""`/v1/dead-letters` and `GET /v1/notifications` (web/dead_letters.py, web/notifications.py)
over real HTTP in-process, with fake stores and bus (tests/unit/web_fakes.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orion_streams import records
from orion_streams.services.dead_letters import row_from_record

from .fakes import placed
from .web_fakes import Client, World, bearer, notification_row, problem, serve

ADMIN = bearer("root", "admin")
CUSTOMER = bearer("alice")


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def client(world: World) -> AsyncIterator[Client]:
    async with serve(world) as http:
        yield http


def park(world: World, value: bytes, *, key: str = "o-1", offset: int = 7) -> str:
    details = {"partition": 0, "offset": 3, "key": key, "value": value.decode()}
    body, headers = records.dead_letter("broken", "bad_record", "orders", "2026-12-04T10:00:00Z", details)
    return str(world.runtime.dead_letters.add(row_from_record(1, offset, body, headers, 1_780_000_000_000))["id"])


def order_value(sku: str = "SKU-001") -> bytes:
    return records.encode(placed("o-1", ((sku, 1),)))


async def test_a_fixed_dead_letter_is_sent_again_once(world: World, client: Client) -> None:
    dl_id = park(world, order_value())
    response = await client.post(f"/v1/dead-letters/{dl_id}/replay", headers=ADMIN)
    assert response.status == 200
    assert await response.json() == {"id": dl_id, "outcome": "replayed", "detail": "sent to orders",
                                     "partition": 1, "offset": 0}
    topic, key, value, _ = world.bus.sent[0]
    assert (topic, key, value) == ("orders", "o-1", order_value())
    assert world.bus.headers()["actor"] == "user:root" and world.bus.headers()["replay-of"] == f"dead-letters/{dl_id}"
    again = await (await client.post(f"/v1/dead-letters/{dl_id}/replay", headers=ADMIN)).json()
    assert again["outcome"] == "already_replayed" and len(world.bus.sent) == 1
    assert [a[2] for a in world.runtime.dead_letters.audit] == ["replayed", "already_replayed"]


async def test_one_that_would_fail_again_is_refused_with_422(world: World, client: Client) -> None:
    dl_id = park(world, order_value("NO-SUCH-SKU"))
    response = await client.post(f"/v1/dead-letters/{dl_id}/replay", headers=ADMIN)
    body = await problem(response, 422)
    assert "would be dead-lettered again" in body["detail"] and "NO-SUCH-SKU" in body["detail"]
    assert world.bus.sent == [] and world.runtime.refreshes == 1  # a fresher catalog was asked first


async def test_a_selection_answers_each_id(world: World, client: Client) -> None:
    good, bad = park(world, order_value(), offset=1), park(world, b"{nope", offset=2)
    response = await client.post("/v1/dead-letters/replay", json={"ids": [good, bad, "9-9", good]}, headers=ADMIN)
    assert response.status == 200
    items = (await response.json())["items"]
    assert [(i["id"], i["outcome"]) for i in items] == [(good, "replayed"), (bad, "refused"), ("9-9", "not_found")]
    assert len(world.bus.sent) == 1


async def test_kafka_away_is_a_503_and_records_nothing(world: World, client: Client) -> None:
    dl_id = park(world, order_value())
    world.bus.error = ConnectionError("broker gone")
    response = await client.post(f"/v1/dead-letters/{dl_id}/replay", headers=ADMIN)
    await problem(response, 503)
    assert world.runtime.dead_letters.rows[dl_id]["status"] == "open" and world.runtime.dead_letters.audit == []


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/dead-letters"), ("GET", "/v1/dead-letters/1-7"), ("POST", "/v1/dead-letters/1-7/replay"),
    ("GET", "/v1/notifications"),
])
async def test_customers_and_keys_without_ops_are_refused(world: World, client: Client, method: str, path: str) -> None:
    assert (await client.request(method, path)).status == 401
    assert (await client.request(method, path, headers=CUSTOMER)).status == 403
    key, _ = world.runtime.api_keys.grant("reader", "orders:read")
    body = await problem(await client.request(method, path, headers={"X-API-Key": key}), 403)
    assert "ops" in body["detail"]


async def test_a_key_with_ops_lists_dead_letters_and_failed_emails(world: World, client: Client) -> None:
    key, _ = world.runtime.api_keys.grant("console", "ops")
    dl_id = park(world, order_value())
    world.runtime.notifications.add(notification_row("n-1", "o-1", status="failed"))
    world.runtime.notifications.add(notification_row("n-2", "o-1", status="sent"))
    listed = await (await client.get("/v1/dead-letters", headers={"X-API-Key": key})).json()
    assert [i["id"] for i in listed["items"]] == [dl_id]
    emails = await (await client.get("/v1/notifications?status=failed", headers={"X-API-Key": key})).json()
    assert [i["id"] for i in emails["items"]] == ["n-1"]
    retried = await client.post("/v1/notifications/n-1/retry", headers={"X-API-Key": key})
    assert retried.status == 202


@pytest.mark.parametrize(("path", "field"), [
    ("/v1/dead-letters?status=closed", "status"), ("/v1/dead-letters?limit=0", "limit"),
    ("/v1/dead-letters?cursor=zzz", "cursor"), ("/v1/notifications?status=sent", "status"),
    ("/v1/notifications?cursor=zzz", "cursor"),
])
async def test_bad_queries_name_the_field(client: Client, path: str, field: str) -> None:
    await problem(await client.get(path, headers=ADMIN), 422, field)


@pytest.mark.parametrize(("body", "field"), [
    ({}, "ids"), ({"ids": []}, "ids"), ({"ids": "1-7"}, "ids"), ({"ids": [7]}, "ids"),
    ({"ids": ["1-7"], "more": 1}, "more"), ({"ids": [f"{i}-0" for i in range(101)]}, "ids"),
])
async def test_a_bad_selection_is_a_422(world: World, client: Client, body: object, field: str) -> None:
    await problem(await client.post("/v1/dead-letters/replay", json=body, headers=ADMIN), 422, field)
    assert world.bus.sent == []


async def test_unknown_ids_are_404(client: Client) -> None:
    assert (await problem(await client.get("/v1/dead-letters/0-0", headers=ADMIN), 404))["detail"] == "no dead letter 0-0"
    assert (await problem(await client.post("/v1/dead-letters/0-0/replay", headers=ADMIN), 404))["detail"] == (
        "no dead letter 0-0")
