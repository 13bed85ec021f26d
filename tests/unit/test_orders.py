"""Order requests, the status machine and catalog pricing."""

from __future__ import annotations

from typing import Any

import pytest

from orion_streams.domain.catalog import Catalog, Product
from orion_streams.domain.errors import UNKNOWN_SKU, ValidationFailed
from orion_streams.domain.orders import (
    OrderStatus,
    RequestedLine,
    can_transition,
    order_currency,
    priced_lines,
)
from orion_streams.schemas import parse_order_request

S = OrderStatus
CATALOG = Catalog(
    [
        Product("A", "Lamp", 1_000),
        Product("B", "Mouse", 250),
        Product("OLD", "Retired", 99, active=False),
        Product("USD", "Import", 500, currency="USD"),
    ]
)


def body(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "lines": [{"sku": "A", "quantity": 2}],
        "payment": {"token": "tok_visa"},
        "email": "ada@example.com",
    }
    base.update(overrides)
    return base


def errors_of(raw: object) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as info:
        parse_order_request(raw, CATALOG)
    return {e.field: e.message for e in info.value.errors}


# --- parse_order_request: accepted bodies -------------------------------------------


def test_valid_order_is_parsed() -> None:
    req = parse_order_request(
        body(lines=[{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}]), CATALOG
    )
    assert req.lines == (RequestedLine("A", 2), RequestedLine("B", 1))
    assert req.payment_token == "tok_visa"
    assert req.email == "ada@example.com"


def test_duplicate_skus_are_merged_in_first_seen_order() -> None:
    lines = [{"sku": "B", "quantity": 1}, {"sku": "A", "quantity": 3}, {"sku": "B", "quantity": 4}]
    req = parse_order_request(body(lines=lines), CATALOG)
    assert req.lines == (RequestedLine("B", 5), RequestedLine("A", 3))


def test_quantity_bounds_are_inclusive() -> None:
    lines = [{"sku": "A", "quantity": 1}, {"sku": "B", "quantity": 1000}]
    req = parse_order_request(body(lines=lines), CATALOG)
    assert [line.quantity for line in req.lines] == [1, 1000]


def test_fifty_lines_are_accepted() -> None:
    lines = [{"sku": "A", "quantity": 1}] * 50
    req = parse_order_request(body(lines=lines), CATALOG)
    assert req.lines == (RequestedLine("A", 50),)


# --- parse_order_request: refused bodies ---------------------------------------------


def test_merged_quantity_over_limit_is_refused() -> None:
    errs = errors_of(body(lines=[{"sku": "A", "quantity": 600}, {"sku": "A", "quantity": 401}]))
    assert "1001" in errs["lines"] and "exceeds 1000" in errs["lines"]


@pytest.mark.parametrize("qty", [0, -1, 1001])
def test_quantity_out_of_range_is_refused(qty: int) -> None:
    errs = errors_of(body(lines=[{"sku": "A", "quantity": qty}]))
    assert errs == {"lines[0].quantity": "must be between 1 and 1000"}


@pytest.mark.parametrize("qty", [2.0, 1.5, True, "2", None])
def test_quantity_that_is_not_an_int_is_refused(qty: object) -> None:
    errs = errors_of(body(lines=[{"sku": "A", "quantity": qty}]))
    assert errs == {"lines[0].quantity": "must be a whole number"}


def test_fifty_one_lines_are_refused() -> None:
    errs = errors_of(body(lines=[{"sku": "A", "quantity": 1}] * 51))
    assert errs == {"lines": "at most 50 lines per order"}


@pytest.mark.parametrize("lines", [[], None, "A", {"sku": "A", "quantity": 1}])
def test_empty_or_non_list_lines_are_refused(lines: object) -> None:
    assert errors_of(body(lines=lines)) == {"lines": "must be a non-empty list"}


def test_missing_lines_are_refused() -> None:
    raw = body()
    del raw["lines"]
    assert errors_of(raw) == {"lines": "must be a non-empty list"}


def test_line_that_is_not_an_object_is_refused() -> None:
    errs = errors_of(body(lines=["A"]))
    assert errs == {"lines[0]": "must be an object with sku and quantity"}


def test_unknown_sku_is_refused() -> None:
    errs = errors_of(body(lines=[{"sku": "NOPE", "quantity": 1}]))
    assert errs == {"lines[0].sku": "unknown SKU 'NOPE'"}


@pytest.mark.parametrize("sku", ["", None, 7])
def test_missing_sku_is_refused(sku: object) -> None:
    assert errors_of(body(lines=[{"sku": sku, "quantity": 1}])) == {"lines[0].sku": "is required"}


def test_inactive_product_is_refused() -> None:
    errs = errors_of(body(lines=[{"sku": "OLD", "quantity": 1}]))
    assert errs == {"lines[0].sku": "OLD is not for sale"}


@pytest.mark.parametrize(("sku", "unknown"), [("NOPE", True), ("OLD", False), ("A", False)])
def test_an_unknown_sku_is_classed_as_such(sku: str, unknown: bool) -> None:
    """Code acts on the class (refresh the catalog, check again), never on the words."""
    with pytest.raises(ValidationFailed) as err:
        parse_order_request(body(lines=[{"sku": sku, "quantity": 1 if sku != "A" else 0}]), CATALOG)
    assert err.value.has(UNKNOWN_SKU) is unknown


@pytest.mark.parametrize("payment", [None, "tok_visa", ["tok_visa"]])
def test_payment_that_is_not_an_object_is_refused(payment: object) -> None:
    assert errors_of(body(payment=payment)) == {"payment": "must be an object with a token"}


@pytest.mark.parametrize(
    "payment", [{}, {"token": None}, {"token": ""}, {"token": "  "}, {"token": 5}]
)
def test_missing_or_blank_payment_token_is_refused(payment: object) -> None:
    assert errors_of(body(payment=payment)) == {"payment.token": "is required"}


def test_payment_token_length_limit() -> None:
    assert (
        parse_order_request(body(payment={"token": "t" * 200}), CATALOG).payment_token == "t" * 200
    )
    errs = errors_of(body(payment={"token": "t" * 201}))
    assert errs == {"payment.token": "at most 200 characters"}


def test_extra_payment_field_is_refused() -> None:
    errs = errors_of(body(payment={"token": "tok", "amount": 1}))
    assert errs == {"payment.amount": "is not accepted"}


@pytest.mark.parametrize(
    "email",
    [
        None,
        "",
        "ada",
        "ada@",
        "@example.com",
        "ada@example",
        "ada@example.c",
        "a da@example.com",
        "ada@@example.com",
        "a" * 65 + "@example.com",
        "ada@" + "e" * 250 + ".com",
        42,
    ],
)
def test_bad_email_is_refused(email: object) -> None:
    assert errors_of(body(email=email)) == {"email": "must be a valid email address"}


def test_email_with_trailing_newline_is_refused() -> None:
    assert errors_of(body(email="ada@example.com\n")) == {"email": "must be a valid email address"}


@pytest.mark.parametrize("field", ["price", "unit_price", "status", "user_id", "total", "currency"])
def test_server_owned_top_level_field_is_refused(field: str) -> None:
    errs = errors_of(body(**{field: 1}))
    assert list(errs) == [field]
    assert "not accepted" in errs[field]


@pytest.mark.parametrize("field", ["price", "unit_price", "status", "total"])
def test_server_owned_line_field_is_refused(field: str) -> None:
    errs = errors_of(body(lines=[{"sku": "A", "quantity": 1, field: 0}]))
    assert list(errs) == [f"lines[0].{field}"]


@pytest.mark.parametrize("raw", [None, [], "order", 3, [("lines", [])]])
def test_non_object_body_is_refused(raw: object) -> None:
    assert errors_of(raw) == {"body": "must be a JSON object"}


def test_every_problem_is_reported_at_once() -> None:
    raw = {
        "lines": [{"sku": "NOPE", "quantity": 0}, {"sku": "A", "quantity": 1, "price": 1}],
        "payment": {},
        "email": "nope",
        "total": 1,
    }
    errs = errors_of(raw)
    assert set(errs) == {
        "total",
        "lines[0].sku",
        "lines[0].quantity",
        "lines[1].price",
        "payment.token",
        "email",
    }


def test_validation_failed_message_names_the_fields() -> None:
    with pytest.raises(ValidationFailed, match=r"email: must be a valid email address"):
        parse_order_request(body(email="x"), CATALOG)


# --- status machine ------------------------------------------------------------------

ALLOWED = {
    (S.PENDING, S.RESERVED),
    (S.PENDING, S.REJECTED),
    (S.PENDING, S.CANCELLED),
    (S.RESERVED, S.CONFIRMED),
    (S.RESERVED, S.PAYMENT_FAILED),
    (S.RESERVED, S.CANCELLED),
    (S.CONFIRMED, S.FULFILLED),
    (S.CONFIRMED, S.CANCELLED),
}


@pytest.mark.parametrize("current", list(S))
@pytest.mark.parametrize("target", list(S))
def test_transitions_match_the_table(current: S, target: S) -> None:
    expected = (current, target) in ALLOWED
    assert can_transition(current, target) is expected


def test_status_properties() -> None:
    assert {s for s in S if s.is_failure} == {S.REJECTED, S.PAYMENT_FAILED, S.CANCELLED}
    assert {s for s in S if s.is_terminal} == {
        S.REJECTED,
        S.PAYMENT_FAILED,
        S.CANCELLED,
        S.FULFILLED,
    }
    assert {s for s in S if not s.is_decided} == {S.PENDING}


def test_terminal_states_have_no_way_out() -> None:
    for status in S:
        if status.is_terminal:
            assert not any(can_transition(status, target) for target in S)


# --- pricing -------------------------------------------------------------------------


def test_priced_lines_take_prices_from_the_catalog() -> None:
    lines = [RequestedLine("A", 2), RequestedLine("B", 3)]
    assert priced_lines(lines, CATALOG) == (("A", 2, 1_000), ("B", 3, 250))


def test_priced_lines_refuse_unknown_sku() -> None:
    with pytest.raises(ValidationFailed, match="unknown SKU 'NOPE'") as err:
        priced_lines([RequestedLine("NOPE", 1)], CATALOG)
    assert err.value.has(UNKNOWN_SKU)


def test_order_currency_is_the_shared_currency() -> None:
    assert order_currency([RequestedLine("A", 1), RequestedLine("B", 1)], CATALOG) == "EUR"
    assert order_currency([RequestedLine("USD", 1)], CATALOG) == "USD"


@pytest.mark.parametrize(
    "lines", [[RequestedLine("A", 1), RequestedLine("USD", 1)], [], [RequestedLine("NOPE", 1)]]
)
def test_order_currency_refuses_mixed_or_no_currency(lines: list[RequestedLine]) -> None:
    with pytest.raises(ValidationFailed, match="one currency"):
        order_currency(lines, CATALOG)
