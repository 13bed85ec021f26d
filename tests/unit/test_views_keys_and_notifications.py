"""The admin endpoints for service API keys (web/apikeys.py) and delivery tracking of emails
(web/notifications.py), over real HTTP in-process with fake stores (tests/unit/web_fakes.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from orion_streams.adapters.apikeys import SCOPES
from orion_streams.web.middleware import CORRELATION_ID

from .web_fakes import (
    ALICE,
    BOB,
    Client,
    World,
    bearer,
    notification_row,
    order_row,
    problem,
    serve,
)

ADMIN = bearer("root", "admin")


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def client(world: World) -> AsyncIterator[Client]:
    async with serve(world) as http:
        yield http


# --- /v1/api-keys ---------------------------------------------------------------------------


async def test_create_answers_201_with_the_key_shown_once(world: World, client: Client) -> None:
    response = await client.post(
        "/v1/api-keys", json={"name": "  shop frontend ", "scopes": ["orders:write", "orders:read", "orders:read"]},
        headers=ADMIN,
    )
    assert response.status == 201
    assert response.headers[CORRELATION_ID]
    body = await response.json()
    assert body["key"].startswith("orion_")
    assert (body["name"], body["scopes"], body["created_by"], body["active"]) == (
        "shop frontend", ["orders:read", "orders:write"], "user:root", True)
    # The store was asked for the trimmed name, by the admin as recorded in events.
    assert world.runtime.api_keys.created == [("shop frontend", ["orders:read", "orders:write"], "user:root")]
    # Listing and showing never include the key itself.
    listed = await (await client.get("/v1/api-keys", headers=ADMIN)).json()
    assert [k["id"] for k in listed["items"]] == [body["id"]] and listed["next_cursor"] is None
    shown = await (await client.get(f"/v1/api-keys/{body['id']}", headers=ADMIN)).json()
    assert "key" not in shown and "key" not in listed["items"][0]
    assert shown == {k: v for k, v in body.items() if k != "key"}


async def test_a_created_key_works_until_it_is_revoked(world: World, client: Client) -> None:
    world.store.add_order(order_row("o-1", ALICE))
    created = await (await client.post(
        "/v1/api-keys", json={"name": "reporting", "scopes": ["orders:read"]}, headers=ADMIN)).json()
    as_key = {"X-API-Key": created["key"]}
    assert (await client.get("/v1/orders/o-1", headers=as_key)).status == 200
    revoked = await client.delete(f"/v1/api-keys/{created['id']}", headers=ADMIN)
    assert revoked.status == 200
    body = await revoked.json()
    assert body["id"] == created["id"] and body["active"] is False and body["revoked_at"]
    await problem(await client.get("/v1/orders/o-1", headers=as_key), 401)
    # Revoking again is no error: the same record.
    again = await client.delete(f"/v1/api-keys/{created['id']}", headers=ADMIN)
    assert again.status == 200 and await again.json() == body


async def test_an_unknown_key_id_is_404(client: Client) -> None:
    await problem(await client.get("/v1/api-keys/ak_missing", headers=ADMIN), 404)
    await problem(await client.delete("/v1/api-keys/ak_missing", headers=ADMIN), 404)


@pytest.mark.parametrize(("payload", "fields"), [
    ({"name": "ok"}, ("scopes",)),
    ({"scopes": ["orders:read"]}, ("name",)),
    ({"name": "   ", "scopes": ["orders:read"]}, ("name",)),
    ({"name": "n" * 101, "scopes": ["orders:read"]}, ("name",)),
    ({"name": 7, "scopes": []}, ("name", "scopes")),
    ({"name": "ok", "scopes": ["orders:read", "admin"]}, ("scopes",)),
    ({"name": "ok", "scopes": "orders:read"}, ("scopes",)),
    ({"name": "ok", "scopes": [["orders:read"]]}, ("scopes",)),
    ({"name": "ok", "scopes": ["orders:read"], "expires": "never", "id": "ak_mine"}, ("expires", "id")),
    (["orders:read"], ("body",)),
    ("key", ("body",)),
])
async def test_create_names_every_bad_field(world: World, client: Client, payload: Any, fields: tuple[str, ...]) -> None:
    await problem(await client.post("/v1/api-keys", json=payload, headers=ADMIN), 422, *fields)
    assert world.runtime.api_keys.created == []


async def test_a_name_of_100_characters_and_every_scope_are_allowed(world: World, client: Client) -> None:
    response = await client.post("/v1/api-keys", json={"name": "n" * 100, "scopes": sorted(SCOPES)}, headers=ADMIN)
    assert response.status == 201
    assert (await response.json())["scopes"] == sorted(SCOPES)


async def test_create_needs_a_json_body(world: World, client: Client) -> None:
    await problem(await client.post("/v1/api-keys", data=b"name=x", headers={
        **ADMIN, "Content-Type": "application/x-www-form-urlencoded"}), 415)
    await problem(await client.post("/v1/api-keys", data=b"{name", headers={
        **ADMIN, "Content-Type": "application/json"}), 400)
    assert world.runtime.api_keys.created == []


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/api-keys"), ("GET", "/v1/api-keys"), ("GET", "/v1/api-keys/ak_1"), ("DELETE", "/v1/api-keys/ak_1"),
])
async def test_key_management_is_for_admins_only(world: World, client: Client, method: str, path: str) -> None:
    _, key_id = world.runtime.api_keys.grant("ops", *SCOPES)
    key, _ = world.runtime.api_keys.grant("everything", *SCOPES)
    payload = {"name": "x", "scopes": ["orders:read"]}
    path = path.replace("ak_1", key_id)
    await problem(await client.request(method, path, json=payload), 401)
    for who in (bearer(ALICE), bearer("svc", "service"), {"X-API-Key": key}):
        await problem(await client.request(method, path, json=payload, headers=who), 403)
    assert world.runtime.api_keys.created == []
    assert world.runtime.api_keys.records[key_id]["active"] is True


# --- notifications --------------------------------------------------------------------------


async def test_an_orders_notifications_are_shown_to_its_owner_and_admins(world: World, client: Client) -> None:
    world.store.add_order(order_row("o-1", ALICE))
    rows = [world.runtime.notifications.add(notification_row(f"n-{i}", "o-1")) for i in range(2)]
    world.runtime.notifications.add(notification_row("n-other", "o-2"))
    for who in (bearer(ALICE), ADMIN):
        response = await client.get("/v1/orders/o-1/notifications", headers=who)
        assert response.status == 200
        assert await response.json() == {"items": rows, "next_cursor": None}
    await problem(await client.get("/v1/orders/o-1/notifications", headers=bearer(BOB)), 404)
    await problem(await client.get("/v1/orders/o-9/notifications", headers=ADMIN), 404)


async def test_an_orders_notifications_with_a_key_need_orders_read(world: World, client: Client) -> None:
    world.store.add_order(order_row("o-1", ALICE))
    reader, _ = world.runtime.api_keys.grant("support", "orders:read")
    stock, _ = world.runtime.api_keys.grant("stock", "inventory:read")
    assert (await client.get("/v1/orders/o-1/notifications", headers={"X-API-Key": reader})).status == 200
    await problem(await client.get("/v1/orders/o-1/notifications", headers={"X-API-Key": stock}), 403)


async def test_one_notification_is_for_admins(world: World, client: Client) -> None:
    row = world.runtime.notifications.add(notification_row("n-1", "o-1", "failed", attempts=5))
    response = await client.get("/v1/notifications/n-1", headers=ADMIN)
    assert response.status == 200 and await response.json() == row
    await problem(await client.get("/v1/notifications/n-2", headers=ADMIN), 404)
    await problem(await client.get("/v1/notifications/n-1", headers=bearer(ALICE)), 403)
    # Keys need the ops scope (the console's); every other scope is not enough.
    key, _ = world.runtime.api_keys.grant("all", *(SCOPES - {"ops"}))
    await problem(await client.get("/v1/notifications/n-1", headers={"X-API-Key": key}), 403)
    ops, _ = world.runtime.api_keys.grant("console", "ops")
    assert (await client.get("/v1/notifications/n-1", headers={"X-API-Key": ops})).status == 200


async def test_a_failed_notification_is_queued_again_with_202(world: World, client: Client) -> None:
    world.runtime.notifications.add(notification_row("n-1", "o-1", "failed", attempts=5))
    response = await client.post("/v1/notifications/n-1/retry", headers=ADMIN)
    assert response.status == 202
    body = await response.json()
    assert (body["id"], body["status"], body["attempts"]) == ("n-1", "queued", 0)
    assert world.runtime.notifications.requeued == ["n-1"]


@pytest.mark.parametrize("status", ["sent", "queued"])
async def test_a_notification_that_has_not_failed_is_409(world: World, client: Client, status: str) -> None:
    world.runtime.notifications.add(notification_row("n-1", "o-1", status))
    body = await problem(await client.post("/v1/notifications/n-1/retry", headers=ADMIN), 409)
    assert status in body["detail"]
    assert world.runtime.notifications.requeued == []


async def test_retrying_an_unknown_notification_is_404_and_customers_get_403(world: World, client: Client) -> None:
    await problem(await client.post("/v1/notifications/n-404/retry", headers=ADMIN), 404)
    world.runtime.notifications.add(notification_row("n-1", "o-1", "failed"))
    await problem(await client.post("/v1/notifications/n-1/retry", headers=bearer(ALICE)), 403)
    assert world.runtime.notifications.requeued == []
