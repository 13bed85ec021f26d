"""The ops console (`GET /console`) in a real Chromium against a running stack: a worker, a
mailer whose SMTP server is down until the test starts it, Kafka and PostgreSQL.

It signs in (a customer's token is refused), sees orders placed through the API appear with
their final status within 2 s of being decided, sees a SKU turn low-stock and adjusts it,
replays a poison order after its SKU is added and sees the order decided, and retries a
failed email. The browser's console must stay free of errors throughout.

The browser is the system's Chromium (Debian's `chromium` package; `.ci/run` installs it),
driven by Playwright; without either the test is skipped with the reason. With
`ORION_CONSOLE_SCREENSHOTS=<dir>` it saves the screenshots the README shows.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orion_devstack.ports import free_port
from orion_devstack.smtp import MailCatcher
from orion_streams import records
from orion_streams.domain import events as e
from orion_streams.domain.orders import RequestedLine

from ..integration.harness import (
    Api,
    Mailer,
    Services,
    Worker,
    add_product,
    eventually,
    new_id,
    produce,
)

LIVE = 2.0  # seconds from a decision to the page showing it
SLOW = 30.0  # deadlines for what waits on the pipeline (first fetches, recovery)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on this machine (Debian's chromium package; .ci/run installs it)")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        pytest.skip(f"Playwright is not installed: {exc}")
    executable = _chromium()
    async with async_playwright() as pw:
        try:
            chromium = await pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        except Exception as exc:
            pytest.skip(f"Chromium at {executable} does not start under Playwright: {exc}")
        try:
            yield chromium
        finally:
            await chromium.close()


async def _audit(page: Any, when: str) -> None:
    """axe-core's WCAG 2.1 A and AA rules on the page as it stands: no serious or critical
    violation (missing labels, contrast, keyboard traps, landmarks, names of controls)."""
    from axe_playwright_python.async_playwright import Axe

    results = await Axe().run(page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21aa"]},
                                             "resultTypes": ["violations"]})
    bad = [v for v in results.response["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, f"accessibility ({when}):\n" + "\n".join(
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:5]}" for v in bad)


async def test_the_console_shows_and_acts_on_the_live_shop(
    fresh_services: Services, tmp_path: Path, browser: Any,
) -> None:
    catcher = MailCatcher(tmp_path / "mail", port=free_port())
    catcher.start()
    catcher.refuse(-1, "550 5.2.1 Mailbox unavailable")  # every email fails until the test says
    env = {"ORION_SMTP_URL": catcher.url, "ORION_SMTP_TIMEOUT": "3"}
    worker = Worker(fresh_services, "c", env)
    mailer = Mailer(fresh_services, "c", env)
    try:
        worker.start()
        mailer.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            await _scenario(fresh_services, worker, Api(worker.url, session), browser, catcher)
    except BaseException:
        print(f"--- worker ---\n{worker.tail(150)}\n--- mailer ---\n{mailer.tail(60)}")
        raise
    finally:
        mailer.stop()
        worker.stop()
        catcher.stop()


async def _scenario(services: Services, worker: Worker, api: Api, browser: Any, catcher: MailCatcher) -> None:
    admin, customer = services.token("ops-anna", ("admin",)), services.token("sarah", ("customer",))
    shots = os.environ.get("ORION_CONSOLE_SCREENSHOTS")
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    # -- sign-in: a customer is refused, an admin gets the live page -----------------------------
    await page.goto(worker.url + "/console")
    await page.fill("#credential", customer)
    await page.press("#credential", "Enter")  # the keyboard alone signs in
    refusal = page.locator("#signin-error")
    await refusal.wait_for(state="visible", timeout=10_000)
    assert "admin" in (await refusal.inner_text()).lower()
    assert await page.locator("#signin").is_visible()
    await page.fill("#credential", admin)
    await page.press("#credential", "Enter")
    await page.locator("#ws-state", has_text="live").wait_for(timeout=SLOW * 1000)
    await _audit(page, "signed in")

    # -- orders placed through the API show up with their final status within 2 s -------------
    sku = "T-011"
    status, body, _ = await api.call("POST", f"/v1/inventory/{sku}/adjustments", admin,
                                     {"delta": 4, "reason": "restock", "low_stock_threshold": 2})
    assert status == 200, body
    order_ids, shown_after = [], []
    for payment in ("tok_ok", "tok_ok", "tok_declined", "tok_ok"):
        status, order, _ = await api.place(customer, [{"sku": sku, "quantity": 1}], payment, wait=20)
        final = "CONFIRMED" if payment == "tok_ok" else "PAYMENT_FAILED"
        assert status == 200 and order["status"] == final, order
        decided = time.monotonic()
        cell = page.locator(f'tr[data-order-id="{order["order_id"]}"] [data-status="{final}"]')
        await cell.wait_for(timeout=LIVE * 1000)
        shown_after.append(time.monotonic() - decided)
        order_ids.append(order["order_id"])
    print(f"decided -> shown on the page: {', '.join(f'{s * 1000:.0f} ms' for s in shown_after)}")

    # -- fulfil an order from its row; find another by id: its audit trail and emails -----------
    fulfilled = page.locator(f'tr[data-order-id="{order_ids[1]}"]')
    await fulfilled.locator('[data-action="fulfil"]').click()
    await fulfilled.locator('[data-status="FULFILLED"]').wait_for(timeout=LIVE * 1000 + 1000)
    assert (await api.order(admin, order_ids[1]))["status"] == "FULFILLED"
    await page.fill("#order-search-id", order_ids[0])
    await page.press("#order-search-id", "Enter")
    await page.locator(f'#order-detail[data-order-id="{order_ids[0]}"]').wait_for(timeout=10_000)
    for step in ("OrderPlaced", "PaymentAuthorized"):  # the trail loads after the order
        await page.locator("#order-events tr[data-seq]", has_text=step).first.wait_for(timeout=10_000)
    await page.locator("#order-notifications tr[data-notification-id]").first.wait_for(timeout=10_000)

    # -- the SKU is low now (1 left, threshold 2); adjust it from the page ----------------------
    row = page.locator(f'tr[data-sku="{sku}"]')
    await page.locator(f'tr[data-sku="{sku}"][data-low-stock="true"]').wait_for(timeout=LIVE * 1000 + 500)
    await page.select_option("#adjust-sku", sku)
    await page.fill("#adjust-delta", "10")
    await page.select_option("#adjust-reason", "restock")
    await page.click("#adjust-submit")
    await page.locator(f'tr[data-sku="{sku}"][data-low-stock="false"]').wait_for(timeout=10_000)
    assert "11" in await row.inner_text()
    level = await api.stock(admin, sku)
    assert (level["available"], level["low_stock"]) == (11, False)

    # -- a poison order is parked, replayed after its SKU exists, and decided ------------------
    fix_sku, poison_id = f"CON-{new_id()[:6]}", f"poison-{new_id()[:8]}"
    poison = records.encode(e.OrderPlaced(
        event_id=new_id(), order_id=poison_id, user_id="sarah", email="sarah@example.com",
        lines=(RequestedLine(fix_sku, 1),), payment_token="tok_ok", placed_at=records.utc_iso(time.time()),
    ))
    await produce(services.bootstrap, "orders", poison_id.encode(), poison)

    async def parked() -> str | None:
        status, listed, _ = await api.call("GET", "/v1/dead-letters?status=open", admin)
        assert status == 200, listed
        return next((item["id"] for item in listed["items"] if item["key"] == poison_id), None)

    dl_id = await eventually(parked, SLOW, "the poison order in the dead-letter index")
    await add_product(services, fix_sku)

    await api.restock_new(admin, fix_sku, 3)
    await page.click("#dead-letters-refresh")
    letter = page.locator(f'tr[data-dead-letter-id="{dl_id}"]')
    await letter.wait_for(timeout=10_000)
    assert fix_sku in await letter.inner_text()
    await letter.locator('[data-action="replay"]').click()
    await letter.locator("[data-outcome]", has_text="replayed").wait_for(timeout=10_000)
    await page.locator(f'tr[data-order-id="{poison_id}"] [data-status]').filter(has_text="CONFIRMED").wait_for(
        timeout=SLOW * 1000)

    # -- a failed email is retried once its server is back -------------------------------------
    async def failed_email() -> str | None:
        status, listed, _ = await api.call("GET", "/v1/notifications?status=failed", admin)
        assert status == 200, listed
        return next((item["id"] for item in listed["items"] if item["order_id"] == order_ids[0]), None)

    email_id = await eventually(failed_email, SLOW, "an email of the first order to fail")
    catcher.accept_all()  # the mail server is fixed
    await page.click("#failed-emails-refresh")
    email = page.locator(f'#failed-emails-body tr[data-notification-id="{email_id}"]')
    await email.wait_for(timeout=10_000)
    await email.locator('[data-action="retry"]').click()

    async def sent() -> bool:
        status, row, _ = await api.call("GET", f"/v1/notifications/{email_id}", admin)
        assert status == 200, row
        return bool(row["status"] == "sent")

    await eventually(sent, SLOW, "the retried email to be sent")
    assert any(order_ids[0] in message.as_string() for message in catcher.messages)

    await _audit(page, "after acting")

    # -- readable at 1280x800 and on a phone ----------------------------------------------------
    await page.evaluate("window.scrollTo(0, 0)")
    if shots:
        await page.screenshot(path=str(Path(shots) / "console-desktop.png"))
    for width in (1280, 390):
        await page.set_viewport_size({"width": width, "height": 800 if width > 400 else 844})
        await page.locator("#ws-state", has_text="live").wait_for(timeout=5_000)
        wide = await page.evaluate("document.documentElement.scrollWidth")
        assert wide <= width, f"the page is {wide}px wide on a {width}px screen"
    await page.evaluate("window.scrollTo(0, 0)")
    if shots:
        await page.screenshot(path=str(Path(shots) / "console-phone.png"), full_page=False)
    assert errors == [], errors
    await context.close()
