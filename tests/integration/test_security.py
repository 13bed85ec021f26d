"""Service API keys, identity on every event, isolation between users and abuse limits,
against the real worker, broker and database."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

import aiohttp
from sqlalchemy import text

from orion_streams import records
from orion_streams.adapters.postgres import SqlAlchemyStore

from .harness import Api, Services, Worker, eventually, produce, read_topic

GOOD_LINE = {"sku": "SKU-001", "quantity": 1}


async def rows(services: Services, sql: str, **params: Any) -> list[dict[str, Any]]:
    store = SqlAlchemyStore(services.database_url, pool_size=1)
    try:
        async with store.engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(text(sql), params)).all()]
    finally:
        await store.close()


async def key_call(api: Api, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    status, payload, _ = await api.call(method, path, None, body, headers={"X-API-Key": key})
    return status, payload


async def test_an_api_key_is_created_used_scoped_and_revoked(
    api: Api, services: Services, admin: str, customer: str, fresh_sku: Any
) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 5)
    status, created, _ = await api.call(
        "POST", "/v1/api-keys", admin, {"name": "shop-frontend", "scopes": ["orders:write", "orders:read"]}
    )
    assert status == 201, created
    key, key_id = created["key"], created["id"]
    assert key.startswith("orion_") and len(key) > 40 and created["prefix"] == key[:12]
    assert created["scopes"] == ["orders:read", "orders:write"] and created["created_by"] == "user:mike"

    # the database keeps a hash, never the key
    stored = await rows(services, "select * from api_keys where id = :id", id=key_id)
    assert stored and stored[0]["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    everything = json.dumps(await rows(services, "select * from api_keys"), default=str)
    assert key not in everything and key[12:] not in everything
    status, listed, _ = await api.call("GET", "/v1/api-keys", admin)
    assert status == 200 and key not in json.dumps(listed)
    assert any(item["id"] == key_id and item["active"] for item in listed["items"])

    # used: an order placed by the service, owned by it, audited as it
    status, body = await key_call(api, key, "POST", "/v1/orders?wait=10",
                                  {"lines": [{"sku": sku, "quantity": 1}], "payment": {"token": "tok_ok"},
                                   "email": "buyer@example.com"})
    assert status == 200 and body["status"] == "CONFIRMED", body
    assert body["user_id"] == key_id
    status, trail = await key_call(api, key, "GET", f"/v1/orders/{body['order_id']}/events")
    assert status == 200
    assert trail["items"][0]["actor"] == f"service:shop-frontend/{key_id}"
    assert trail["items"][0]["actor_roles"] == ["service"]
    record = (await api.call("GET", f"/v1/api-keys/{key_id}", admin))[1]
    assert record["last_used_at"] is not None

    # scopes: no inventory:write, no orders:fulfil, no admin endpoints
    for method, path, payload in [
        ("POST", f"/v1/inventory/{sku}/adjustments", {"delta": 5, "reason": "restock"}),
        ("POST", f"/v1/orders/{body['order_id']}/fulfil", None),
        ("GET", "/v1/inventory", None),
        ("POST", "/v1/api-keys", {"name": "x", "scopes": ["orders:read"]}),
    ]:
        status, problem = await key_call(api, key, method, path, payload)
        assert status == 403, (path, problem)
    assert (await api.stock(admin, sku))["on_hand"] == 5

    # customers cannot manage keys
    status, _, _ = await api.call("POST", "/v1/api-keys", customer, {"name": "x", "scopes": ["orders:read"]})
    assert status == 403
    status, problem, _ = await api.call("POST", "/v1/api-keys", admin, {"name": "", "scopes": ["root"], "x": 1})
    assert status == 422 and {e["field"] for e in problem["errors"]} == {"name", "scopes", "x"}

    # revoked: refused at once
    status, revoked, _ = await api.call("DELETE", f"/v1/api-keys/{key_id}", admin)
    assert status == 200 and revoked["active"] is False and revoked["revoked_at"]
    status, problem = await key_call(api, key, "GET", "/v1/orders")
    assert status == 401 and "revoked" in problem["detail"], problem
    for bad in ("orion_" + "x" * 43, "not-a-key", ""):
        status, problem = await key_call(api, bad, "GET", "/v1/orders")
        assert status == 401, (bad, problem)


async def test_another_users_order_is_404_everywhere_and_unchanged(api: Api, services: Services, admin: str) -> None:
    alice, bob = services.token("alice-2"), services.token("bob-2")
    status, body, _ = await api.place(alice, [GOOD_LINE], wait=10)
    order_id = body["order_id"]
    before = await api.order(alice, order_id)
    for method, path in [
        ("GET", f"/v1/orders/{order_id}"),
        ("GET", f"/v1/orders/{order_id}/events"),
        ("GET", f"/v1/orders/{order_id}/notifications"),
        ("POST", f"/v1/orders/{order_id}/cancel"),
    ]:
        status, problem, _ = await api.call(method, path, bob)
        assert status == 404, (path, problem)
        assert order_id in problem["detail"]
    status, mine, _ = await api.call("GET", "/v1/orders", bob)
    assert status == 200 and all(o["order_id"] != order_id for o in mine["items"])
    after = await api.order(alice, order_id)
    assert after["status"] == before["status"] and after["updated_at"] == before["updated_at"]
    events = [e["type"] for e in (await api.call("GET", f"/v1/orders/{order_id}/events", alice))[1]["items"]]
    assert "CancelRequested" not in events and all("Cancel" not in t for t in events)

    # a customer on admin and service endpoints
    some = str(uuid.uuid4())
    for method, path, payload in [
        ("GET", "/v1/inventory", None),
        ("POST", "/v1/inventory/SKU-001/adjustments", {"delta": 5, "reason": "restock"}),
        ("POST", f"/v1/orders/{order_id}/fulfil", None),
        ("GET", "/v1/api-keys", None),
        ("POST", "/v1/api-keys", {"name": "x", "scopes": ["orders:read"]}),
        ("DELETE", f"/v1/api-keys/ak_{some[:16]}", None),
        ("GET", f"/v1/notifications/{some}", None),
        ("POST", f"/v1/notifications/{some}/retry", None),
    ]:
        status, problem, _ = await api.call(method, path, bob, payload)
        assert status == 403, (path, problem)
        assert problem["status"] == 403


async def test_events_from_http_carry_actor_roles_and_correlation_to_the_audit_trail(
    api: Api, services: Services, customer: str, admin: str, fresh_sku: Any
) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 3)
    status, body, _ = await api.place(
        customer, [{"sku": sku, "quantity": 1}], wait=10, headers={"X-Correlation-ID": "sec-corr-1"}
    )
    order_id = body["order_id"]
    assert body["status"] == "CONFIRMED"
    want = {"correlation-id": b"sec-corr-1", "actor": b"user:sarah", "actor-roles": b"customer"}

    def headers_of(found: list[Any], key: str) -> list[dict[str, bytes]]:
        # Requests and answers travel in batch records: each item carries its own headers.
        out = []
        for r in found:
            if records.BATCH_HEADER in dict(r.headers):
                try:
                    items = records.decode_batch(r.value)
                except records.BadRecord:  # another test's poison
                    continue
                out += [dict(headers) for k, headers, _ in items if k == key]
            elif r.key == key.encode():
                out.append(dict(r.headers))
        return out

    placed = headers_of(await read_topic(services.bootstrap, "orders"), order_id)
    requests = [h for h in headers_of(await read_topic(services.bootstrap, "stock-requests"), sku)
                if h.get("correlation-id") == b"sec-corr-1"]
    statuses = headers_of(await read_topic(services.bootstrap, "order-status"), order_id)
    replies = headers_of(await read_topic(services.bootstrap, "order-events"), order_id)
    # A one-line order's audit entries ride on its status changes (order-audit carries only
    # those of steps that change no status); the trail below shows they kept who and why.
    for name, found in [("orders", placed), ("stock-requests", requests), ("order-status", statuses),
                        ("order-events", replies)]:
        assert found, name
        for h in found:
            assert {k: h.get(k) for k in want} == want, (name, h)

    status, trail, _ = await api.call("GET", f"/v1/orders/{order_id}/events", customer)
    assert trail["items"] and all(
        (e["correlation_id"], e["actor"], e["actor_roles"]) == ("sec-corr-1", "user:sarah", ["customer"])
        for e in trail["items"]
    ), trail["items"]


async def test_an_order_from_a_producer_that_names_nobody_is_audited_as_unidentified(
    api: Api, services: Services, admin: str, fresh_sku: Any
) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 2)
    order_id = f"anon-{uuid.uuid4().hex}"
    placed = {"type": "OrderPlaced", "event_id": str(uuid.uuid4()), "order_id": order_id, "user_id": "sarah",
              "email": "sarah@example.com", "lines": [{"sku": sku, "quantity": 1}], "payment": {"token": "tok_ok"}}
    await produce(services.bootstrap, "orders", order_id.encode(), json.dumps(placed).encode())

    async def trail() -> Any:
        status, body, _ = await api.call("GET", f"/v1/orders/{order_id}/events", admin)
        return body["items"] if status == 200 and len(body["items"]) >= 3 else None

    items = await eventually(trail, 30, "the audit trail of the anonymous order")
    assert all(e["actor"] == "external:unidentified" and e["actor_roles"] == [] for e in items), items


async def test_order_creation_is_rate_limited_per_user_with_retry_after(api: Api, services: Services) -> None:
    flooder = services.token(f"flooder-{uuid.uuid4().hex[:6]}")
    body = {"lines": [{"sku": "NO-SUCH-SKU", "quantity": 1}], "payment": {"token": "tok_ok"}, "email": "f@x.test"}
    statuses: list[int] = []
    retry_after: list[str] = []
    for _ in range(45):
        status, problem, headers = await api.call("POST", "/v1/orders", flooder, body)
        statuses.append(status)
        if status == 429:
            assert problem["title"] == "Too Many Requests" and "orders a minute" in problem["detail"]
            retry_after.append(headers["Retry-After"])
    refused = statuses.count(429)
    assert refused >= 10 and statuses.count(422) >= 30, statuses  # burst 30 in the session worker
    assert statuses[:30] == [422] * 30
    assert all(int(v) >= 1 for v in retry_after)
    others = services.token(f"bystander-{uuid.uuid4().hex[:6]}")
    status, _, _ = await api.call("POST", "/v1/orders", others, body)
    assert status == 422  # another user is not limited by the flooder
    assert (await rows(services, "select count(*) as n from orders where user_id like 'flooder-%'"))[0]["n"] == 0


async def test_websocket_connections_per_user_are_bounded(worker: Worker, services: Services) -> None:
    token = services.token(f"tabs-{uuid.uuid4().hex[:6]}")
    url = f"{worker.url}/v1/ws?token={token}"
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(url) for _ in range(10)]
        try:
            for ws in sockets:
                hello = await asyncio.wait_for(ws.receive_json(), 10)
                assert hello["type"] == "hello"
            extra = await session.ws_connect(url)
            msg = await asyncio.wait_for(extra.receive(), 10)
            assert msg.type is aiohttp.WSMsgType.CLOSE and extra.close_code == 4429, (msg, extra.close_code)
            assert "at most 10" in msg.extra
        finally:
            for ws in sockets:
                await ws.close()


async def test_the_apikey_command_creates_lists_and_revokes(api: Api, services: Services) -> None:
    import os
    import sys

    env = {**os.environ, "ORION_DATABASE_URL": services.database_url}

    async def orion(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orion_streams.cli", "apikey", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, out.decode()
        return out.decode()

    created = await orion("create", "warehouse", "--scopes", "orders:read,orders:fulfil")
    key = created.rsplit("key (shown once, store it now): ", 1)[1].strip()
    record = json.loads(created.split("\nkey (shown once")[0])
    assert record["scopes"] == ["orders:fulfil", "orders:read"] and record["name"] == "warehouse"
    status, _ = await key_call(api, key, "GET", "/v1/orders")
    assert status == 200
    listed = json.loads(await orion("list"))
    assert any(item["id"] == record["id"] for item in listed) and key not in json.dumps(listed)
    await orion("revoke", record["id"])
    status, _ = await key_call(api, key, "GET", "/v1/orders")
    assert status == 401
