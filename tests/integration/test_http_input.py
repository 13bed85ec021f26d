"""Bad input and bad credentials get a clear 4xx problem and change nothing."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from orion_streams.adapters.postgres import SqlAlchemyStore

from .harness import Api, Services, count_rows

GOOD_LINE = {"sku": "SKU-001", "quantity": 1}


def _order(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"lines": [GOOD_LINE], "payment": {"token": "tok_ok"}, "email": "a@example.com"}
    body.update(overrides)
    return body


BAD_BODIES = {
    "unknown sku": (_order(lines=[{"sku": "NOPE-1", "quantity": 1}]), "lines[0].sku"),
    "quantity zero": (_order(lines=[{"sku": "SKU-001", "quantity": 0}]), "lines[0].quantity"),
    "negative quantity": (_order(lines=[{"sku": "SKU-001", "quantity": -3}]), "lines[0].quantity"),
    "huge quantity": (_order(lines=[{"sku": "SKU-001", "quantity": 10**12}]), "lines[0].quantity"),
    "fractional quantity": (_order(lines=[{"sku": "SKU-001", "quantity": 1.5}]), "lines[0].quantity"),
    "51 lines": (_order(lines=[{"sku": "SKU-001", "quantity": 1}] * 51), "lines"),
    "no lines": (_order(lines=[]), "lines"),
    "missing lines": ({"payment": {"token": "tok_ok"}, "email": "a@example.com"}, "lines"),
    "missing payment": ({"lines": [GOOD_LINE], "email": "a@example.com"}, "payment"),
    "bad email": (_order(email="not-an-email"), "email"),
    "sets price": (_order(lines=[{"sku": "SKU-001", "quantity": 1, "unit_price": 1}]), "lines[0].unit_price"),
    "sets status": (_order(status="CONFIRMED"), "status"),
    "sets total": (_order(total=1), "total"),
    "sets owner": (_order(user_id="someone-else"), "user_id"),
    "array body": ([GOOD_LINE], "body"),
}


async def _orders_of(services: Services, user: str) -> int:
    store = SqlAlchemyStore(services.database_url, pool_size=1)
    try:
        return await count_rows(store, "orders", user_id=user)
    finally:
        await store.close()


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_invalid_order_is_refused_with_422(api: Api, services: Services, case: str) -> None:
    user = f"bad-input-{case.replace(' ', '-')}"
    token = services.token(user)
    body, field = BAD_BODIES[case]
    status, problem, headers = await api.call("POST", "/v1/orders", token, body)
    assert status == 422, problem
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["status"] == 422 and problem["title"] and problem["detail"]
    assert field in {e["field"] for e in problem["errors"]}, problem["errors"]
    assert await _orders_of(services, user) == 0


async def test_invalid_json_is_400(api: Api, services: Services) -> None:
    token = services.token("bad-json-user")
    status, problem, _ = await api.call("POST", "/v1/orders", token, raw=b'{"lines": [')
    assert status == 400 and "JSON" in problem["detail"]
    assert await _orders_of(services, "bad-json-user") == 0


async def test_oversized_body_is_413(api: Api, services: Services) -> None:
    token = services.token("big-body-user")
    status, problem, _ = await api.call("POST", "/v1/orders", token, raw=b'{"x": "' + b"a" * 400_000 + b'"}')
    assert status == 413, problem


def _forged(services: Services, **claims: Any) -> str:
    base = {"sub": "mallory", "roles": ["customer"], "exp": int(time.time()) + 600}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, services.settings.jwt_secret.get_secret_value(), algorithm="HS256")


async def test_bad_tokens_are_401(api: Api, services: Services) -> None:
    good = services.token("mallory")
    header, payload, signature = good.split(".")
    tampered_payload = jwt.utils.base64url_encode(b'{"sub":"admin","roles":["admin"],"exp":9999999999}').decode()
    cases = {
        "missing": None,
        "expired": _forged(services, exp=int(time.time()) - 3600),
        "no exp": _forged(services, exp=None),
        "wrong secret": jwt.encode({"sub": "mallory", "exp": int(time.time()) + 60}, "guess" * 8, algorithm="HS256"),
        "tampered payload": f"{header}.{tampered_payload}.{signature}",
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "alg none": jwt.encode({"sub": "mallory", "exp": int(time.time()) + 60}, None, algorithm="none"),
    }
    for name, token in cases.items():
        status, problem, headers = await api.call("POST", "/v1/orders", token, _order())
        assert status == 401, (name, problem)
        assert headers["Content-Type"].startswith("application/problem+json"), name
        assert problem["detail"], name
    assert await _orders_of(services, "mallory") == 0
    assert await _orders_of(services, "admin") == 0


async def test_other_users_orders_are_404_and_roles_are_enforced(api: Api, services: Services, admin: str) -> None:
    alice, bob = services.token("alice"), services.token("bob")
    status, body, _ = await api.place(alice, [GOOD_LINE], wait=10)
    order_id = body["order_id"]
    for method, path in [("GET", f"/v1/orders/{order_id}"), ("GET", f"/v1/orders/{order_id}/events"),
                         ("POST", f"/v1/orders/{order_id}/cancel")]:
        status, problem, _ = await api.call(method, path, bob)
        assert status == 404, (path, problem)
    assert (await api.order(alice, order_id))["status"] != "CANCELLED"
    for method, path, body in [("GET", "/v1/inventory", None),
                               ("POST", "/v1/inventory/SKU-001/adjustments", {"delta": 5, "reason": "restock"}),
                               ("POST", f"/v1/orders/{order_id}/fulfil", None)]:
        status, problem, _ = await api.call(method, path, bob, body)
        assert status in (403, 404), (path, problem)
        if path != f"/v1/orders/{order_id}/fulfil":
            assert status == 403
    status, _, _ = await api.call("GET", f"/v1/orders/{order_id}", admin)
    assert status == 200


async def test_adjustment_that_would_go_negative_is_409(api: Api, admin: str, fresh_sku: Any) -> None:
    sku = fresh_sku()
    await api.restock(admin, sku, 3)
    status, problem, _ = await api.call("POST", f"/v1/inventory/{sku}/adjustments", admin, {"delta": -4, "reason": "damage"})
    assert status == 409, problem
    status, body, _ = await api.call("POST", f"/v1/inventory/{sku}/adjustments", admin, {"delta": -3, "reason": "damage"})
    assert status == 200 and body["level"]["available"] == 0
    status, problem, _ = await api.call("POST", f"/v1/inventory/{sku}/adjustments", admin, {"delta": 3, "reason": "gift"})
    assert status == 422
