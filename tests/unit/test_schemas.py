"""The API's shapes are declared once (orion_streams/schemas.py): what the views and the Kafka
decoder accept and what /openapi.json says come from the same models, so a limit changed in
its one place moves both, and the document's schemas judge bodies as the models do."""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import jsonschema_rs
import pytest

from orion_streams import records, schemas
from orion_streams.domain import orders as domain_orders
from orion_streams.domain.catalog import Catalog, Product
from orion_streams.domain.errors import ValidationFailed
from orion_streams.services import orders
from orion_streams.web import openapi

CATALOG = Catalog([Product("A", "Lamp", 1_000), Product("B", "Mouse", 250)])
LINE = {"sku": "A", "quantity": 1}
ORDER: dict[str, Any] = {"lines": [LINE], "payment": {"token": "tok_ok"}, "email": "ada@example.com"}


def rebuilt(monkeypatch: pytest.MonkeyPatch, **limits: Any) -> ModuleType:
    """`orion_streams.schemas` as it would be with these limits, each changed where it is
    written (the domain's constant, or the `NAME = value` line of schemas.py), and the
    document built from it from now on (openapi.build)."""
    source = inspect.getsource(schemas)
    for name, value in limits.items():
        if hasattr(domain_orders, name):
            monkeypatch.setattr(domain_orders, name, value)
        else:
            source, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, flags=re.MULTILINE)
            assert count == 1, name
    module = ModuleType(schemas.__name__)
    module.__file__, module.__package__ = schemas.__file__, schemas.__package__
    monkeypatch.setitem(sys.modules, schemas.__name__, module)
    exec(compile(source, str(schemas.__file__), "exec"), module.__dict__)
    monkeypatch.setattr(openapi, "schemas", module)
    return module


def refused(parse: Callable[[], object]) -> dict[str, str]:
    """Field -> message of what `parse` refuses ({} when it accepts)."""
    try:
        parse()
    except ValidationFailed as exc:
        return {e.field: e.message for e in exc.errors}
    return {}


def component(doc: dict[str, Any], name: str, field: str) -> dict[str, Any]:
    prop: dict[str, Any] = doc["components"]["schemas"][name]["properties"][field]
    return prop


def parameter(doc: dict[str, Any], path: str, method: str, name: str) -> dict[str, Any]:
    (param,) = [p for p in doc["paths"][path][method]["parameters"] if p.get("name") == name]
    schema: dict[str, Any] = param["schema"]
    return schema


def test_the_served_document_is_the_one_built_from_the_models() -> None:
    assert openapi.document() == openapi.build()


def test_orders_from_http_and_from_kafka_go_through_the_one_check() -> None:
    assert records.parse_order_request is orders.parse_order_request is schemas.parse_order_request


def test_order_limits_move_the_document_and_the_check_together(monkeypatch: pytest.MonkeyPatch) -> None:
    s = rebuilt(monkeypatch, MAX_LINES=2, MAX_QUANTITY=7, MAX_TOKEN_LENGTH=6)
    doc = openapi.build()
    assert component(doc, "OrderRequest", "lines")["maxItems"] == 2
    assert component(doc, "OrderLineRequest", "quantity")["maximum"] == 7
    assert component(doc, "PaymentRequest", "token")["maxLength"] == 6

    def order(**changes: Any) -> Callable[[], object]:
        return lambda: s.parse_order_request({**ORDER, **changes}, CATALOG)

    assert refused(order(lines=[{"sku": "A", "quantity": 7}, {"sku": "B", "quantity": 7}])) == {}
    assert refused(order(lines=[LINE] * 3)) == {"lines": "at most 2 lines per order"}
    assert refused(order(lines=[{"sku": "A", "quantity": 8}])) == {"lines[0].quantity": "must be between 1 and 7"}
    assert refused(order(lines=[{"sku": "A", "quantity": 4}] * 2)) == {"lines": "A: total quantity 8 exceeds 7"}
    assert refused(order(payment={"token": "t" * 7})) == {"payment.token": "at most 6 characters"}


@pytest.mark.parametrize(("limits", "where", "keyword", "value", "parse", "field"), [
    ({"MAX_ADJUSTMENT": 10}, ("AdjustmentRequest", "delta"), "maximum", 10,
     lambda s, n: s.parse(s.AdjustmentRequest, {"delta": n, "reason": "restock"}), "delta"),
    ({"MAX_ADJUSTMENT": 10}, ("AdjustmentRequest", "delta"), "minimum", -10,
     lambda s, n: s.parse(s.AdjustmentRequest, {"delta": n, "reason": "restock"}), "delta"),
    ({"MAX_ORDER_PAGE": 3}, ("/v1/orders", "get", "limit"), "maximum", 3,
     lambda s, n: s.parse(s.OrderListQuery, {"limit": str(n)}), "limit"),
    ({"MAX_STOCK_PAGE": 4}, ("/v1/inventory", "get", "limit"), "maximum", 4,
     lambda s, n: s.parse(s.StockListQuery, {"limit": str(n)}), "limit"),
    ({"MAX_WAIT": 2.0}, ("/v1/orders", "post", "wait"), "maximum", 2.0,
     lambda s, n: s.parse(s.PlaceOrderQuery, {"wait": str(n)}), "wait"),
])
def test_a_limit_moves_the_document_and_the_check_together(
    monkeypatch: pytest.MonkeyPatch, limits: dict[str, Any], where: tuple[str, ...], keyword: str, value: float,
    parse: Callable[[ModuleType, float], object], field: str,
) -> None:
    s = rebuilt(monkeypatch, **limits)
    doc = openapi.build()
    schema = component(doc, *where) if len(where) == 2 else parameter(doc, *where)
    assert schema[keyword] == value
    beyond = value + 1 if keyword == "maximum" else value - 1
    assert refused(lambda: parse(s, value)) == {}
    assert list(refused(lambda: parse(s, beyond))) == [field]


def test_the_api_key_name_limit_moves_the_pattern_and_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    s = rebuilt(monkeypatch, MAX_NAME=5)
    pattern = component(openapi.build(), "ApiKeyRequest", "name")["pattern"]
    for name in (" abcde\t", "abcdef", "a   f"):
        body = {"name": name, "scopes": ["orders:read"]}
        accepted = refused(lambda body=body: s.parse(s.ApiKeyRequest, body)) == {}
        assert accepted is (re.search(pattern, name) is not None) is (len(name.strip()) <= 5), name


# Bodies judged by the document's schema (JSON Schema, as clients and schemathesis read it) and
# by the model: both accept or both refuse. (JSON Schema counts 1.0 as an integer; the models
# do not, as the document's descriptions say.)
BODIES: list[tuple[str, Any]] = [
    ("OrderRequest", ORDER),
    ("OrderRequest", {**ORDER, "lines": [LINE] * 50}),
    ("OrderRequest", {**ORDER, "lines": [LINE] * 51}),
    ("OrderRequest", {**ORDER, "lines": []}),
    ("OrderRequest", {**ORDER, "lines": [{"sku": "", "quantity": 1}]}),
    ("OrderRequest", {**ORDER, "lines": [{"sku": "A", "quantity": 1000}]}),
    ("OrderRequest", {**ORDER, "lines": [{"sku": "A", "quantity": 1001}]}),
    ("OrderRequest", {**ORDER, "lines": [{"sku": "A", "quantity": True}]}),
    ("OrderRequest", {**ORDER, "lines": [{"sku": "A", "quantity": "1"}]}),
    ("OrderRequest", {**ORDER, "lines": [{**LINE, "unit_price": 1}]}),
    ("OrderRequest", {**ORDER, "total": 1}),
    ("OrderRequest", {**ORDER, "payment": {"token": " \u3000"}}),
    ("OrderRequest", {**ORDER, "payment": {"token": "t" * 200}}),
    ("OrderRequest", {**ORDER, "payment": {"token": "t" * 201}}),
    ("OrderRequest", {**ORDER, "payment": {"token": "tok", "amount": 1}}),
    ("OrderRequest", {**ORDER, "email": "ada@example.com\n"}),
    ("OrderRequest", {**ORDER, "email": "a\u2028da@example.com"}),
    ("OrderRequest", {**ORDER, "email": "ada@exämple.de"}),
    ("OrderRequest", {**ORDER, "email": "a" * 64 + "@example.com"}),
    ("OrderRequest", {**ORDER, "email": "a" * 65 + "@example.com"}),
    ("OrderRequest", {**ORDER, "email": "ada@" + "e" * 250 + ".com"}),
    ("OrderRequest", [ORDER]),
    ("AdjustmentRequest", {"delta": -1_000_000, "reason": "damage", "low_stock_threshold": None}),
    ("AdjustmentRequest", {"delta": 0, "reason": "restock"}),
    ("AdjustmentRequest", {"delta": 1_000_001, "reason": "restock"}),
    ("AdjustmentRequest", {"delta": 5, "reason": "seed"}),
    ("AdjustmentRequest", {"delta": 5, "reason": "restock", "low_stock_threshold": -1}),
    ("AdjustmentRequest", {"delta": 5, "reason": "restock", "low_stock_threshold": 1_000_000}),
    ("ApiKeyRequest", {"name": " shop ", "scopes": ["orders:read"]}),
    ("ApiKeyRequest", {"name": "\u3000\t", "scopes": ["orders:read"]}),
    ("ApiKeyRequest", {"name": " " + "n" * 100 + " ", "scopes": ["orders:read"]}),
    ("ApiKeyRequest", {"name": "n" * 101, "scopes": ["orders:read"]}),
    ("ApiKeyRequest", {"name": "shop", "scopes": []}),
    ("ApiKeyRequest", {"name": "shop", "scopes": ["orders:read", "admin"]}),
]


@pytest.mark.parametrize(("name", "body"), BODIES)
def test_the_document_judges_a_body_as_the_model_does(name: str, body: Any) -> None:
    doc = openapi.document()
    validator = jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    )
    model = getattr(schemas, name)
    assert validator.is_valid(body) is (refused(lambda: schemas.parse(model, body)) == {})
