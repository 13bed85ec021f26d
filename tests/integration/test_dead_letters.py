"""`/v1/dead-letters` against the real stack: a poison order is parked, indexed, refused for
replay while it would fail again, replayed once its SKU exists, and decided; every call is
audited and a second replay sends nothing. Plus who may call, and bad ids."""

from __future__ import annotations

from typing import Any

import pytest

from orion_streams import records
from orion_streams.adapters.postgres import SqlAlchemyStore
from orion_streams.domain import events as e
from orion_streams.domain.orders import RequestedLine

from .harness import Api, Services, add_product, count_rows, eventually, new_id, produce, read_topic

pytestmark = pytest.mark.asyncio


def poison_order(order_id: str, sku: str) -> bytes:
    return records.encode(e.OrderPlaced(
        event_id=new_id(), order_id=order_id, user_id="sarah", email="sarah@example.com",
        lines=(RequestedLine(sku, 1),), payment_token="tok_ok", placed_at=records.utc_iso(0.0),
    ))


async def parked(api: Api, admin: str, key: str) -> dict[str, Any]:
    async def find() -> dict[str, Any] | None:
        status, body, _ = await api.call("GET", "/v1/dead-letters?status=all&limit=100", admin)
        assert status == 200, body
        return next((item for item in body["items"] if item["key"] == key), None)

    return await eventually(find, 30, f"the dead letter of {key} in /v1/dead-letters")


async def test_a_poison_order_is_replayed_once_after_its_sku_is_fixed(
    services: Services, api: Api, admin: str, customer: str,
) -> None:
    order_id, sku = f"dl-{new_id()}", f"FIX-{new_id()[:8]}"
    await produce(services.bootstrap, "orders", order_id.encode(), poison_order(order_id, sku))
    letter = await parked(api, admin, order_id)
    assert letter["source_topic"] == "orders" and letter["status"] == "open" and letter["replayable"]
    assert "unknown SKU" in letter["reason"] or sku in letter["reason"], letter
    assert isinstance(letter["source_partition"], int) and isinstance(letter["source_offset"], int)
    assert sku in letter["payload"]
    dl_id = letter["id"]

    # Still unknown: refused, nothing sent, the refusal audited.
    status, body, _ = await api.call("POST", f"/v1/dead-letters/{dl_id}/replay", admin)
    assert status == 422 and "would be dead-lettered again" in body["detail"], body

    await add_product(services, sku)

    await api.restock_new(admin, sku, 5)  # it just looked at the catalog, for the refused replay
    status, body, _ = await api.call("POST", f"/v1/dead-letters/{dl_id}/replay", admin)
    assert status == 200 and body["outcome"] == "replayed", body
    order = await api.decided(admin, order_id)
    assert order["status"] == "CONFIRMED", order

    # Idempotent: a second call, alone or in a selection, sends nothing more.
    status, again, _ = await api.call("POST", f"/v1/dead-letters/{dl_id}/replay", admin)
    assert status == 200 and again["outcome"] == "already_replayed", again
    assert (again["partition"], again["offset"]) == (body["partition"], body["offset"])
    status, many, _ = await api.call("POST", "/v1/dead-letters/replay", admin, {"ids": [dl_id, "999-999"]})
    assert status == 200 and [i["outcome"] for i in many["items"]] == ["already_replayed", "not_found"], many
    replayed = [r for r in await read_topic(services.bootstrap, "orders")
                if dict(r.headers or ()).get("replay-of") == f"dead-letters/{dl_id}".encode()]
    assert len(replayed) == 1 and replayed[0].key == order_id.encode()
    assert dict(replayed[0].headers)["actor"] == b"user:mike"

    # The audit trail: every call, with its actor.
    store = SqlAlchemyStore(services.database_url, pool_size=1)
    try:
        assert await count_rows(store, "dead_letter_replays", dead_letter_id=dl_id) == 4
        assert await count_rows(store, "dead_letter_replays", dead_letter_id=dl_id, outcome="replayed",
                                actor="user:mike") == 1
    finally:
        await store.close()
    status, shown, _ = await api.call("GET", f"/v1/dead-letters/{dl_id}", admin)
    assert status == 200 and shown["status"] == "replayed" and not shown["replayable"]
    assert [r["outcome"] for r in shown["replays"]] == ["refused", "replayed", "already_replayed", "already_replayed"]
    assert shown["replayed_by"] == "user:mike"
    status, open_page, _ = await api.call("GET", "/v1/dead-letters?status=open&limit=100", admin)
    assert status == 200 and dl_id not in {i["id"] for i in open_page["items"]}


async def test_who_may_list_and_replay(services: Services, api: Api, admin: str, customer: str) -> None:
    for method, path in (("GET", "/v1/dead-letters"), ("GET", "/v1/dead-letters/0-0"),
                         ("POST", "/v1/dead-letters/0-0/replay")):
        status, body, _ = await api.call(method, path)
        assert status == 401, (method, path, body)
        status, body, _ = await api.call(method, path, customer)
        assert status == 403, (method, path, body)
    status, body, _ = await api.call("POST", "/v1/dead-letters/replay", customer, {"ids": ["0-0"]})
    assert status == 403, body
    status, created, _ = await api.call("POST", "/v1/api-keys", admin, {"name": f"ops-{new_id()[:6]}", "scopes": ["ops"]})
    assert status == 201, created
    status, other, _ = await api.call("POST", "/v1/api-keys", admin, {"name": f"ro-{new_id()[:6]}", "scopes": ["orders:read"]})
    assert status == 201, other
    status, body, _ = await api.call("GET", "/v1/dead-letters", headers={"X-API-Key": created["key"]})
    assert status == 200 and "items" in body, body
    status, body, _ = await api.call("GET", "/v1/notifications?status=failed", headers={"X-API-Key": created["key"]})
    assert status == 200 and "items" in body, body
    status, body, _ = await api.call("GET", "/v1/dead-letters", headers={"X-API-Key": other["key"]})
    assert status == 403 and "ops" in body["detail"], body
    status, body, _ = await api.call("GET", "/v1/notifications", customer)
    assert status == 403, body


async def test_bad_ids_and_queries_are_clear_errors(api: Api, admin: str) -> None:
    status, body, headers = await api.call("POST", "/v1/dead-letters/nope/replay", admin)
    assert status == 404 and body["detail"] == "no dead letter nope", body
    assert headers["Content-Type"].startswith("application/problem+json")
    status, body, _ = await api.call("GET", "/v1/dead-letters/nope", admin)
    assert status == 404, body
    for bad in ({}, {"ids": []}, {"ids": "0-1"}, {"ids": [1]}, {"ids": [f"{i}-0" for i in range(101)]},
                {"ids": ["0-1"], "extra": True}):
        status, body, _ = await api.call("POST", "/v1/dead-letters/replay", admin, bad)
        assert status == 422, (bad, body)
    status, body, _ = await api.call("GET", "/v1/dead-letters?status=gone", admin)
    assert status == 422 and body["errors"][0]["field"] == "status", body
    status, body, _ = await api.call("GET", "/v1/dead-letters?cursor=garbage", admin)
    assert status == 422 and body["errors"][0]["field"] == "cursor", body
    status, body, _ = await api.call("GET", "/v1/notifications?status=sent", admin)
    assert status == 422, body


async def test_pages_are_newest_first_and_follow_their_cursor(services: Services, api: Api, admin: str) -> None:
    keys = [f"dlp-{new_id()}" for _ in range(3)]
    for key in keys:
        await produce(services.bootstrap, "orders", key.encode(), b"{not json")
    for key in keys:
        await parked(api, admin, key)
    seen: list[str] = []
    path = "/v1/dead-letters?status=open&limit=2"
    while path:
        status, body, _ = await api.call("GET", path, admin)
        assert status == 200, body
        seen.extend(item["id"] for item in body["items"])
        path = f"/v1/dead-letters?status=open&limit=2&cursor={body['next_cursor']}" if body["next_cursor"] else ""
    assert len(seen) == len(set(seen))
    status, body, _ = await api.call("GET", "/v1/dead-letters?status=all&limit=100", admin)
    ours = [item for item in body["items"] if item["key"] in keys]
    assert [item["dead_at"] for item in ours] == sorted((item["dead_at"] for item in ours), reverse=True)
    status, body, _ = await api.call("POST", f"/v1/dead-letters/{ours[0]['id']}/replay", admin)
    assert status == 422 and "would be dead-lettered again" in body["detail"], body
