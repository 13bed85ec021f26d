"""Payments that come back late, or orders cancelled after payment: voided exactly once.

A worker uses the HTTP payment adapter against a local provider (a real HTTP server in a
thread of the test process) that authorises as slowly as it is told to, keeps authorising
after the caller gave up, answers 409 while a request with the same key is in progress,
and counts what it really voided and refunded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ..integration.harness import TEST_PRODUCTS, Api, Services, Worker, eventually, running_services

# Seconds the provider takes to authorise each token; the worker's budget is 1 s.
DELAYS = {"tok_slow": 3.0, "tok_ok": 0.0, "tok_capture": 0.0}


@dataclass
class Provider:
    """A payment provider: idempotent per key, slow on request, counting real effects."""

    authorized: dict[str, str] = field(default_factory=dict)  # payment key -> authorisation id
    captured: set[str] = field(default_factory=set)
    in_progress: set[str] = field(default_factory=set)
    voided: list[str] = field(default_factory=list)  # payment keys, once per real void
    refunded: list[str] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def authorize(self, request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        body = await request.json()
        if key in self.authorized:
            return web.json_response({"approved": True, "authorization_id": self.authorized[key]})
        if key in self.in_progress:
            return web.json_response({"error": "in progress"}, status=409)
        self.in_progress.add(key)
        # The provider finishes what it started whether or not the caller still listens.
        task = asyncio.ensure_future(self._complete(key, body["token"]))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        await asyncio.shield(task)
        return web.json_response({"approved": True, "authorization_id": self.authorized[key]})

    async def _complete(self, key: str, token: str) -> None:
        await asyncio.sleep(DELAYS.get(token, 0.0))  # the provider's own processing time
        self.authorized[key] = f"auth-{key[:8]}"
        if token == "tok_capture":
            self.captured.add(key)
        self.in_progress.discard(key)

    async def void(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = body["payment_key"]
        if key in self.in_progress:
            return web.json_response({"status": "in_progress"}, status=409)
        if key not in self.authorized:
            return web.json_response({"status": "not_found"}, status=404)
        if key in self.captured:
            return web.json_response({"status": "captured"})
        if key not in self.voided:
            self.voided.append(key)
        return web.json_response({"status": "voided"})

    async def refund(self, request: web.Request) -> web.Response:
        key = (await request.json())["payment_key"]
        if key not in self.refunded:
            self.refunded.append(key)
        return web.json_response({"status": "refunded"})


@dataclass
class RunningProvider:
    provider: Provider
    url: str


@pytest.fixture(scope="module")
def provider() -> Iterator[RunningProvider]:
    """The provider's HTTP server on a loop of its own thread, stopped when the module ends."""
    fake = Provider()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    address: list[str] = []

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/authorize", fake.authorize)
        app.router.add_post("/void", fake.void)
        app.router.add_post("/refund", fake.refund)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        address.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
        return runner

    runner_box: list[web.AppRunner] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner_box.append(loop.run_until_complete(serve()))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10), "the provider did not start"
    try:
        yield RunningProvider(fake, address[0])
    finally:
        asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, provider: RunningProvider) -> Iterator[tuple[Services, Worker]]:
    with running_services(tmp_path_factory.mktemp("orion-voids")) as services:
        worker = Worker(services, "payer", {
            "ORION_PAYMENT_GATEWAY": "http",
            "ORION_PAYMENT_URL": f"{provider.url}/authorize",
            "ORION_PAYMENT_TIMEOUT": "1",
            "ORION_PAYMENT_ATTEMPT_TIMEOUT": "0.5",
        }).start()
        try:
            yield services, worker
        finally:
            worker.stop()


@pytest.fixture
async def api(stack: tuple[Services, Worker]) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield Api(stack[1].url, session)


_skus = iter(p.sku for p in TEST_PRODUCTS)


async def _order(api: Api, services: Services, token: str) -> tuple[str, str, Any]:
    """Restock a fresh SKU and place one order of 2 units with `token`."""
    sku = next(_skus)
    admin = services.token("mike", ("admin",))
    await api.restock(admin, sku, 10)
    status, body, _ = await api.place(services.token("sarah"), [{"sku": sku, "quantity": 2}], payment=token)
    assert status == 202, body
    return body["order_id"], sku, admin


async def _audit(api: Api, admin: str, order_id: str, kind: str) -> list[Any]:
    async def seen() -> Any:
        _, events, _ = await api.call("GET", f"/v1/orders/{order_id}/events", admin)
        found = [e for e in events["items"] if e["type"] == kind]
        return found or None

    return list(await eventually(seen, 30, f"{kind} in the audit of {order_id}", interval=0.2))


async def test_a_late_authorisation_is_voided_exactly_once(
    api: Api, stack: tuple[Services, Worker], provider: RunningProvider,
) -> None:
    services, _ = stack
    order_id, sku, admin = await _order(api, services, "tok_slow")
    order = await api.decided(services.token("sarah"), order_id)
    # The provider took 3 s, the budget was 1 s: the order failed on the provider's merits.
    assert order["status"] == "PAYMENT_FAILED", order
    [voided] = await _audit(api, admin, order_id, "PaymentVoided")
    assert voided["data"]["outcome"] == "voided"
    assert order_id in provider.provider.authorized  # it did authorise, after Orion gave up
    types = [e["type"] for e in (await api.call("GET", f"/v1/orders/{order_id}/events", admin))[1]["items"]]
    assert types.index("PaymentTimedOut") < types.index("PaymentVoidRequested") < types.index("PaymentVoided")

    async def released() -> Any:
        level = await api.stock(admin, sku)
        return level if level["reserved"] == 0 else None

    level = await eventually(released, 30, f"the units of {sku} to be released")
    assert level["available"] == 10
    # Exactly once, also after redeliveries had their chance: nothing voids it again.
    await eventually(lambda: _settled(api, admin, order_id), 30, "the releases to be confirmed")
    assert provider.provider.voided.count(order_id) == 1
    assert (await api.order(services.token("sarah"), order_id))["status"] == "PAYMENT_FAILED"


async def _settled(api: Api, admin: str, order_id: str) -> bool:
    _, events, _ = await api.call("GET", f"/v1/orders/{order_id}/events", admin)
    return any(e["type"] == "LineReleased" for e in events["items"])


async def test_cancelling_a_confirmed_order_voids_its_payment(
    api: Api, stack: tuple[Services, Worker], provider: RunningProvider,
) -> None:
    services, _ = stack
    order_id, sku, admin = await _order(api, services, "tok_ok")
    customer = services.token("sarah")
    assert (await api.decided(customer, order_id))["status"] == "CONFIRMED"
    assert (await api.call("POST", f"/v1/orders/{order_id}/cancel", customer))[0] == 202
    assert (await api.decided(customer, order_id, final=("CANCELLED",)))["status"] == "CANCELLED"
    [voided] = await _audit(api, admin, order_id, "PaymentVoided")
    assert voided["data"] == {"authorization_id": provider.provider.authorized[order_id], "outcome": "voided"}
    assert provider.provider.voided.count(order_id) == 1 and order_id not in provider.provider.refunded


async def test_cancelling_a_captured_payment_refunds_it(
    api: Api, stack: tuple[Services, Worker], provider: RunningProvider,
) -> None:
    services, _ = stack
    order_id, sku, admin = await _order(api, services, "tok_capture")
    customer = services.token("sarah")
    assert (await api.decided(customer, order_id))["status"] == "CONFIRMED"
    assert (await api.call("POST", f"/v1/orders/{order_id}/cancel", customer))[0] == 202
    [refunded] = await _audit(api, admin, order_id, "PaymentRefunded")
    assert refunded["data"]["outcome"] == "refunded"
    assert provider.provider.refunded == [order_id] and order_id not in provider.provider.voided
