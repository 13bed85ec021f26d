"""Place, cancel, fulfil and adjust stock as use cases (services/orders.py), with a fake read model
and a fake sender: no broker, no HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from orion_streams import topics as t
from orion_streams.domain import commands as c
from orion_streams.domain import events as e
from orion_streams.domain.catalog import Catalog, Product
from orion_streams.domain.errors import (
    UNKNOWN_SKU,
    Conflict,
    NotFound,
    Unprocessable,
    ValidationFailed,
)
from orion_streams.domain.orders import OrderStatus
from orion_streams.services import orders
from orion_streams.services.admission import Refusal
from orion_streams.web.problems import from_domain


class Sent(list[tuple[str, str, Any]]):
    async def __call__(self, topic: str, key: str, message: Any) -> None:
        self.append((topic, key, message))


class Reads:
    def __init__(self, level: dict[str, Any] | None, answers: list[dict[str, Any] | None]) -> None:
        self.level, self.answers, self.asked = level, answers, 0

    async def get_stock(self, sku: str) -> dict[str, Any] | None:
        return self.level

    async def adjustment(self, adjustment_id: str) -> dict[str, Any] | None:
        self.asked += 1
        return self.answers.pop(0) if self.answers else None


def order(status: OrderStatus) -> dict[str, Any]:
    return {"order_id": "o-1", "status": status.value}


@pytest.mark.parametrize(("status", "told", "sends"), [
    (OrderStatus.PENDING, "CANCELLING", True),
    (OrderStatus.RESERVED, "CANCELLING", True),
    (OrderStatus.CONFIRMED, "CANCELLING", True),
    (OrderStatus.CANCELLED, "CANCELLED", False),
])
async def test_cancel_asks_the_saga_unless_cancelled_already(status: OrderStatus, told: str, sends: bool) -> None:
    sent = Sent()
    assert await orders.cancel(order(status), sent) == told
    assert [(topic, key, type(m)) for topic, key, m in sent] == ([(t.ORDERS.name, "o-1", c.CancelOrder)] if sends else [])


@pytest.mark.parametrize("status", [OrderStatus.FULFILLED, OrderStatus.REJECTED, OrderStatus.PAYMENT_FAILED])
async def test_an_ended_order_cannot_be_cancelled(status: OrderStatus) -> None:
    sent = Sent()
    with pytest.raises(Conflict):
        await orders.cancel(order(status), sent)
    assert sent == []


@pytest.mark.parametrize(("status", "sends"), [(OrderStatus.CONFIRMED, True), (OrderStatus.FULFILLED, False)])
async def test_fulfil_a_confirmed_order_once(status: OrderStatus, sends: bool) -> None:
    sent = Sent()
    await orders.fulfil(order(status), sent)
    assert [type(m) for *_, m in sent] == ([c.FulfilOrder] if sends else [])


@pytest.mark.parametrize("status", [OrderStatus.PENDING, OrderStatus.RESERVED, OrderStatus.CANCELLED, OrderStatus.REJECTED])
async def test_only_a_confirmed_order_is_fulfilled(status: OrderStatus) -> None:
    with pytest.raises(Conflict, match="only a CONFIRMED order"):
        await orders.fulfil(order(status), Sent())


@pytest.mark.parametrize(("body", "fields"), [
    ([], {"body"}),
    ({"delta": 0, "reason": "restock"}, {"delta"}),
    ({"delta": True, "reason": "restock"}, {"delta"}),
    ({"delta": 1_000_001, "reason": "restock"}, {"delta"}),
    ({"delta": 5, "reason": "seed"}, {"reason"}),
    ({"delta": 5, "reason": "restock", "low_stock_threshold": -1}, {"low_stock_threshold"}),
    ({"delta": 5, "reason": "restock", "sku": "X"}, {"sku"}),
    ({"reason": "gift"}, {"delta", "reason"}),
])
def test_an_adjustment_request_names_every_bad_field(body: Any, fields: set[str]) -> None:
    with pytest.raises(ValidationFailed) as err:
        orders.adjustment_request(body)
    assert {e.field for e in err.value.errors} == fields


SKU_A = Product("A", "Alpha", 100)


async def test_an_adjustment_is_sent_to_the_skus_owner_and_waited_for() -> None:
    sent, reads = Sent(), Reads({"available": 3}, [None, {"status": "applied", "detail": None}])
    result = await orders.adjust_stock("A", {"delta": -3, "reason": "damage"}, Products([SKU_A]), reads, sent, poll=0)
    assert result["status"] == "applied" and result["level"] == {"available": 3}
    ((topic, key, command),) = sent
    assert (topic, key, command.delta, command.reason) == (t.STOCK_REQUESTS.name, "A", -3, "damage")
    assert result["adjustment_id"] == command.adjustment_id and reads.asked == 2


@pytest.mark.parametrize(("sku", "level", "error"), [
    ("B", {"available": 3}, NotFound),  # not in the catalog
    ("A", {"available": 3}, Conflict),  # would leave -1 available
])
async def test_an_adjustment_refused_on_the_read_model_sends_nothing(sku: str, level: Any, error: type) -> None:
    sent = Sent()
    with pytest.raises(error):
        await orders.adjust_stock(sku, {"delta": -4, "reason": "damage"}, Products([SKU_A]), Reads(level, []), sent)
    assert sent == []


async def test_an_adjustment_the_owner_refuses_is_a_conflict_and_one_not_answered_in_time_is_pending() -> None:
    refused = Reads(None, [{"status": "rejected", "detail": "would leave -2 available"}])
    with pytest.raises(Conflict, match="would leave -2"):
        await orders.adjust_stock("A", {"delta": 1, "reason": "restock"}, Products([SKU_A]), refused, Sent(), poll=0)
    pending = await orders.adjust_stock("A", {"delta": 1, "reason": "restock"}, Products([SKU_A]), Reads(None, []), Sent(),
                                        wait=0.05, poll=0.01)
    assert pending["status"] == "pending"


@pytest.mark.parametrize(("error", "status"), [
    (NotFound("no product X"), 404), (Conflict("no"), 409), (ValidationFailed([]), 422), (Unprocessable("no"), 422),
])
def test_a_refusal_becomes_its_problem(error: Exception, status: int) -> None:
    assert from_domain(error).status == status  # type: ignore[arg-type]


# -- placing an order ----------------------------------------------------------------------

class Products:
    """The catalog as the worker holds it; `later` is what a refresh finds."""

    def __init__(self, now: list[Product], later: list[Product] | None = None) -> None:
        self.catalog, self.later, self.refreshed = Catalog(now), later, 0

    async def refresh_catalog_if_stale(self) -> bool:
        self.refreshed += 1
        if self.later is None:
            return False
        self.catalog = Catalog(self.later)
        return True


class Keys:
    def __init__(self, known: dict[tuple[str, str], dict[str, Any]] | None = None) -> None:
        self.known = known or {}

    async def __call__(self, subject: str, key: str) -> dict[str, Any] | None:
        return self.known.get((subject, key))


LAMP = Product("LAMP", "Lamp", 1_000)
BODY = {"lines": [{"sku": "LAMP", "quantity": 2}], "payment": {"token": "tok_ok"}, "email": "sarah@example.com"}
BUSY = Refusal("delay", "orders wait 6 s for a decision", 2)


async def test_an_order_is_priced_from_the_catalog_and_sent_as_order_placed() -> None:
    sent = Sent()
    placement = await orders.place(BODY, "sarah", None, None, Products([LAMP]), Keys(), sent)
    ((topic, key, placed),) = sent
    assert (topic, key, type(placed)) == (t.ORDERS.name, placement.order_id, e.OrderPlaced)
    assert (placed.user_id, placed.email, [(x.sku, x.quantity) for x in placed.lines]) == (
        "sarah", "sarah@example.com", [("LAMP", 2)])
    accepted = placement.accepted
    assert accepted is not None and (accepted.lines, accepted.currency, accepted.idempotency_key) == (
        (("LAMP", 2, 1_000),), "EUR", None)


async def test_a_product_added_since_the_catalog_was_loaded_is_found_by_looking_again() -> None:
    products = Products([], later=[LAMP])
    placement = await orders.place(BODY, "sarah", None, None, products, Keys(), Sent())
    assert products.refreshed == 1 and placement.accepted is not None


async def test_an_unknown_sku_is_refused_after_one_more_look_and_nothing_is_sent() -> None:
    products, sent = Products([]), Sent()
    with pytest.raises(ValidationFailed) as err:
        await orders.place(BODY, "sarah", None, None, products, Keys(), sent)
    assert err.value.has(UNKNOWN_SKU) and products.refreshed == 1 and sent == []


async def test_other_bad_fields_are_refused_without_looking_again() -> None:
    products = Products([LAMP])
    with pytest.raises(ValidationFailed):
        await orders.place({**BODY, "email": "nope"}, "sarah", None, None, products, Keys(), Sent())
    assert products.refreshed == 0


async def test_the_same_key_gives_the_same_order_id_and_a_retry_is_never_refused() -> None:
    first = await orders.place(BODY, "sarah", "k-1", None, Products([LAMP]), Keys(), Sent())
    again = await orders.place(BODY, "sarah", "k-1", None, Products([LAMP]), Keys(), Sent())
    other = await orders.place(BODY, "mike", "k-1", None, Products([LAMP]), Keys(), Sent())
    assert first.order_id == again.order_id != other.order_id
    assert first.accepted is not None
    stored = {("sarah", "k-1"): {"order_id": first.order_id, "request_hash": first.accepted.request_hash}}
    sent = Sent()
    retry = await orders.place(BODY, "sarah", "k-1", BUSY, Products([LAMP]), Keys(stored), sent)
    assert (retry.order_id, retry.accepted, sent) == (first.order_id, None, [])


async def test_a_key_used_for_another_request_is_refused() -> None:
    stored = {("sarah", "k-1"): {"order_id": "o-0", "request_hash": "something else"}}
    with pytest.raises(Unprocessable, match="Idempotency-Key was used with a different request"):
        await orders.place(BODY, "sarah", "k-1", None, Products([LAMP]), Keys(stored), Sent())


@pytest.mark.parametrize("key", ["", "k" * 201, "bad\ud800"])
async def test_a_key_must_be_1_to_200_characters_of_utf8(key: str) -> None:
    with pytest.raises(ValidationFailed, match="Idempotency-Key"):
        await orders.place(BODY, "sarah", key, None, Products([LAMP]), Keys(), Sent())


async def test_a_new_order_is_refused_while_admission_says_busy_and_nothing_is_sent() -> None:
    sent = Sent()
    with pytest.raises(orders.Busy) as busy:
        await orders.place(BODY, "sarah", "k-2", BUSY, Products([LAMP]), Keys(), sent)
    assert busy.value.refusal is BUSY and sent == []
