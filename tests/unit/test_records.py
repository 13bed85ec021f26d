"""Wire formats: message envelopes and table values."""

from __future__ import annotations

import dataclasses
import json
from enum import Enum
from typing import Any

import pytest

from orion_streams import records
from orion_streams.domain import commands as c
from orion_streams.domain import events as e
from orion_streams.domain.catalog import Catalog, Product
from orion_streams.domain.orders import OrderStatus, RequestedLine
from orion_streams.domain.saga import (
    Clock,
    LineState,
    OrderSaga,
    SagaLine,
    VoidState,
    handle,
    start,
)
from orion_streams.domain.stock import Hold, HoldState, StockLevel

CATALOG = Catalog([Product("A", "Lamp", 1_000), Product("B", "Mouse", 250)])
AT = "2024-05-01T12:00:00Z"

PLACED = e.OrderPlaced(
    event_id="ev-1",
    order_id="o1",
    user_id="u1",
    email="ada@example.com",
    lines=(RequestedLine("A", 2), RequestedLine("B", 1)),
    payment_token="tok_visa",
    placed_at=AT,
)

MESSAGES: list[Any] = [
    c.ReserveLine("o1", "A", 2),
    c.ReleaseLine("o1", "A"),
    c.CommitLine("o1", "A"),
    c.AdjustStock("A", "adj-1", -3, "damage"),
    c.AdjustStock("A", "adj-2", 10, "restock", low_stock_threshold=4),
    c.AuthorizePayment("o1", 2_250, "EUR", "tok_visa"),
    c.CancelOrder("o1", "ev-c"),
    c.CancelOrder("o1", "ev-c", "customer asked"),
    c.FulfilOrder("o1", "ev-f"),
    PLACED,
    dataclasses.replace(PLACED, placed_at=""),
    e.LineReserved("o1", "A", 2),
    e.LineRejected("o1", "A", 2, 1, "A out of stock"),
    e.LineReleased("o1", "A", 2),
    e.LineCommitted("o1", "A", 2),
    e.PaymentAuthorized("o1", "auth-1"),
    e.PaymentDeclined("o1", "card expired"),
    e.PaymentTimedOut("o1"),
    e.PaymentTimedOut("o1", "payment provider unavailable: 503"),
    c.VoidPayment("o1", "auth-1", 2_250, "EUR"),
    c.VoidPayment("o1", None, 2_250, "EUR"),
    e.PaymentVoided("o1", "auth-1", "voided"),
    e.PaymentVoided("o1", None, "nothing"),
    e.PaymentVoidFailed("o1", "provider unavailable"),
    e.OrderStatusChanged(
        order_id="o1",
        user_id="u1",
        email="ada@example.com",
        status=OrderStatus.PENDING,
        previous=None,
        lines=(e.OrderLineView("A", 2, 1_000),),
        total=2_000,
        currency="EUR",
        failure_reason=None,
        version=1,
        created_at=AT,
        at=AT,
    ),
    e.OrderStatusChanged(
        order_id="o1",
        user_id="u1",
        email="ada@example.com",
        status=OrderStatus.PAYMENT_FAILED,
        previous=OrderStatus.RESERVED,
        lines=(e.OrderLineView("A", 2, 1_000), e.OrderLineView("B", 1, 250)),
        total=2_250,
        currency="EUR",
        failure_reason="payment timed out",
        version=7,
        created_at=AT,
        at=AT,
    ),
    e.AuditEntry("o1", 3, "LineReserved", AT, {"sku": "A", "quantity": 2}),
    e.AuditEntry("o1", 4, "FulfilOrder", AT),
    e.StockLevelChanged("A", 10, 3, 2, 5, AT),
    e.LowStockDetected("A", 2, 5, AT),
    e.StockAdjusted("A", "adj-1", 5, "restock", 15, 3),
    e.AdjustmentRejected("A", "adj-1", "unknown reason 'gift'"),
]


def _message_classes(module: Any) -> set[str]:
    return {
        name
        for name, obj in vars(module).items()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == module.__name__
    }


def test_the_round_trip_list_covers_every_message_type() -> None:
    every = _message_classes(c) | _message_classes(e)
    assert every - {"OrderLineView"} == {type(m).__name__ for m in MESSAGES}


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_encode_decode_round_trip(message: Any) -> None:
    raw = records.encode(message)
    assert json.loads(raw)["type"] == type(message).__name__
    assert records.decode(raw, CATALOG) == message


def test_order_placed_nests_the_payment_token() -> None:
    data = json.loads(records.encode(PLACED))
    assert data["payment"] == {"token": "tok_visa"}
    assert "payment_token" not in data
    assert data["lines"] == [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}]


def test_decode_accepts_str_and_merges_order_lines() -> None:
    data = json.loads(records.encode(PLACED))
    data["lines"] = [{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 2}]
    decoded = records.decode(json.dumps(data), CATALOG)
    assert decoded.lines == (RequestedLine("A", 3),)


def test_audit_entry_with_enum_data_decodes_to_equal_strings() -> None:
    saga, _ = start(PLACED, CATALOG, Clock(AT, 0.0))
    saga, _ = handle(saga, e.LineReserved("o1", "A", 2), Clock(AT, 1.0))
    saga, out = handle(saga, e.LineReserved("o1", "B", 1), Clock(AT, 2.0))
    changed = [m for m in out if isinstance(m, e.AuditEntry) and m.kind == "OrderStatusChanged"]
    assert changed and all(records.decode(records.encode(m)) == m for m in changed)
    assert json.loads(records.encode(changed[0]))["data"]["to"] == "RESERVED"


# --- refused records -----------------------------------------------------------------


def placed_json(**changes: Any) -> bytes:
    data = json.loads(records.encode(PLACED))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty value"),
        (b"not json", "not JSON"),
        (b"\xff\xfe\xfa", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"LineReserved"', "must be a JSON object"),
        (b"{}", "no string 'type'"),
        (b'{"type": 5}', "no string 'type'"),
        (b'{"type": "Nonsense"}', "unknown message type 'Nonsense'"),
        (b'{"type": "LineReserved", "order_id": "o1", "sku": "A"}', "LineReserved"),
        (b'{"type": "OrderStatusChanged", "order_id": "o1"}', "OrderStatusChanged"),
    ],
)
def test_malformed_records_are_refused(raw: bytes | None, reason: str) -> None:
    with pytest.raises(records.BadRecord, match=reason):
        records.decode(raw, CATALOG)


def test_order_placed_needs_a_catalog() -> None:
    with pytest.raises(records.BadRecord, match="needs the catalog"):
        records.decode(records.encode(PLACED))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"order_id": None}, "'order_id' must be a non-empty string"),
        ({"order_id": ""}, "'order_id' must be a non-empty string"),
        ({"order_id": "o" * 101}, "longer than 100"),
        ({"event_id": None}, "'event_id'"),
        ({"user_id": 7}, "'user_id'"),
        ({"placed_at": 7}, "'placed_at'"),
        ({"lines": []}, "invalid order: lines"),
        ({"lines": [{"sku": "NOPE", "quantity": 1}]}, "unknown SKU"),
        ({"lines": [{"sku": "A", "quantity": 0}]}, r"lines\[0\].quantity"),
        ({"lines": [{"sku": "A", "quantity": 1, "unit_price": 1}]}, r"lines\[0\].unit_price"),
        ({"payment": None}, "payment"),
        ({"email": "nope"}, "email"),
        ({"total": 1}, "may not be sent: total"),
        ({"status": "CONFIRMED"}, "may not be sent: status"),
        ({"price": 1, "currency": "EUR"}, "may not be sent: currency, price"),
    ],
)
def test_invalid_order_placed_is_refused(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(records.BadRecord, match=reason) as err:
        records.decode(placed_json(**changes), CATALOG)
    # Only an unknown SKU is worth a fresher catalog (the saga refreshes it and decodes again).
    assert isinstance(err.value, records.UnknownSku) is (reason == "unknown SKU")


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "ReserveLine", "order_id": "o1", "sku": "A", "quantity": "5"},
        {
            "type": "AdjustStock",
            "sku": "A",
            "adjustment_id": "a",
            "delta": 1.5,
            "reason": "restock",
        },
    ],
    ids=["ReserveLine-str-quantity", "AdjustStock-float-delta"],
)
def test_internal_message_with_wrong_field_type_is_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(records.BadRecord):
        records.decode(json.dumps(raw).encode())


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        records.encode({"type": "ReserveLine"})
    with pytest.raises(TypeError):
        records.encode(c.ReserveLine)


# --- table values --------------------------------------------------------------------


def _through_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


@pytest.mark.parametrize(
    "saga",
    [
        OrderSaga(
            order_id="o1",
            user_id="u1",
            email="ada@example.com",
            status=OrderStatus.PENDING,
            lines=(SagaLine("A", 2, 1_000), SagaLine("B", 1, 250, LineState.RESERVED)),
            currency="EUR",
            payment_token="tok_visa",
            created_at=AT,
            updated_at=AT,
        ),
        OrderSaga(
            order_id="o2",
            user_id="u1",
            email="ada@example.com",
            status=OrderStatus.RESERVED,
            lines=(SagaLine("A", 2, 1_000, LineState.RESERVED),),
            currency="EUR",
            payment_token="tok_visa",
            created_at=AT,
            updated_at=AT,
            seq=4,
            failure_reason="payment timed out",
            paying=True,
        ),
        OrderSaga(
            order_id="o3",
            user_id="u1",
            email="ada@example.com",
            status=OrderStatus.CANCELLED,
            lines=(SagaLine("A", 2, 1_000, LineState.RELEASED, settled=True),),
            currency="EUR",
            payment_token="tok_visa",
            created_at=AT,
            updated_at=AT,
            seq=9,
            authorization_id="auth-9",
            void=VoidState.REQUESTED,
        ),
    ],
)
def test_saga_value_round_trip(saga: OrderSaga) -> None:
    value = _through_json(records.saga_to_value(saga))
    assert value["status"] == saga.status.value
    back = records.saga_from_value(value)
    assert back == saga
    assert back.status is saga.status
    assert all(isinstance(line.state, LineState) for line in back.lines)


def test_stock_value_round_trip() -> None:
    level = StockLevel("A", on_hand=10, reserved=3, low_stock_threshold=2, version=9)
    value = _through_json(records.stock_to_value(level))
    assert value == [10, 3, 2, 9]
    assert records.stock_from_value("A", value) == level


@pytest.mark.parametrize("missing", [None, []])
def test_missing_stock_value_is_an_empty_level(missing: Any) -> None:
    assert records.stock_from_value("A", missing) == StockLevel("A")


@pytest.mark.parametrize("state", list(HoldState))
def test_hold_value_round_trip(state: HoldState) -> None:
    hold = Hold("o1", "A", 0 if state is HoldState.RELEASED else 3, state)
    value = _through_json(records.hold_to_value(hold))
    back = records.hold_from_value("A", "o1", value)
    assert back == hold and back is not None and back.state is state
    assert records.closed_at(value) is None
    stamped = _through_json(records.hold_to_value(hold, closed_at=1_700.5))
    assert records.hold_from_value("A", "o1", stamped) == hold
    assert records.closed_at(stamped) == 1_700.5


def test_a_saga_stored_before_payments_were_tracked_still_loads() -> None:
    old = {
        "order_id": "o1", "user_id": "u1", "email": "a@b.cd", "status": "RESERVED",
        "lines": [["A", 2, 1_000, "reserved", False]], "currency": "EUR", "payment_token": "t",
        "created_at": AT, "updated_at": AT, "seq": 4, "failure_reason": None, "payment_deadline": 12.5,
    }
    saga = records.saga_from_value(old)
    assert saga.paying and saga.void is None and saga.authorization_id is None


def test_missing_hold_value_is_none() -> None:
    assert records.hold_from_value("A", "o1", None) is None


def test_hold_keys_are_distinct_per_sku_and_order() -> None:
    keys = {records.hold_key(s, o) for s in ("A", "AB") for o in ("o1", "Bo1")}
    assert len(keys) == 4


def test_text_postgresql_cannot_store_is_a_bad_record() -> None:
    for bad in ("a\u0000b", "\ud800"):
        raw = json.dumps({"type": "StockLevelChanged", "sku": bad, "on_hand": 1, "reserved": 0,
                           "low_stock_threshold": 0, "version": 1, "at": "x"}).encode()
        with pytest.raises(records.BadRecord, match="U\\+0000"):
            records.decode(raw)


# --- identity headers from producers ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("correlation-id", b"req-42.a:b_c", "req-42.a:b_c"),
        ("correlation-id", "already-text", "already-text"),
        ("actor", b"user:sarah@example.com", "user:sarah@example.com"),
        ("actor", "user:Zoë Müller".encode(), "user:Zoë Müller"),
        ("actor-roles", b"customer,admin", "customer,admin"),
        ("actor", None, None),
    ],
)
def test_safe_headers_pass_unchanged(name: str, raw: Any, expected: str | None) -> None:
    assert records.header_text(name, raw) == (expected, None)


@pytest.mark.parametrize("name", ["correlation-id", "actor", "actor-roles"])
@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"abc\r\nBcc: evil@example.com", "control characters"),
        (b"abc\n", "control characters"),
        (b"a\x00b", "control characters"),
        (b"\x1b[31mred", "control characters"),
        (b"\xff\xfeabc", "not UTF-8"),
        (b"\xc3", "not UTF-8"),
        (b"x" * 5000, "over the limit"),
        (b"", ""),
    ],
)
def test_unsafe_headers_are_dropped_with_a_reason(name: str, raw: bytes, why: str) -> None:
    value, problem = records.header_text(name, raw)
    assert value is None and problem is not None and why in problem


def test_header_limits_are_exact() -> None:
    assert records.header_text("correlation-id", b"c" * 128)[0] == "c" * 128
    assert records.header_text("correlation-id", b"c" * 129)[0] is None
    assert records.header_text("actor", b"a" * records.ACTOR_LIMIT)[0] is not None
    assert records.header_text("actor", b"a" * (records.ACTOR_LIMIT + 1))[0] is None
    assert records.header_text("actor", b" user:x")[0] is None  # no surrounding spaces
    assert records.header_text("correlation-id", b"has space")[0] is None
    assert records.header_text("actor-roles", b"customer,,admin")[0] is None


def _document(message: Any) -> dict[str, Any]:
    """The wire document as the json-module encoder wrote it before orjson: the reference."""

    def plain(value: Any) -> Any:
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    body = {"type": type(message).__name__, **plain(dataclasses.asdict(message))}
    if isinstance(message, e.OrderPlaced):
        body["payment"] = {"token": body.pop("payment_token")}
    return body


def test_encode_writes_the_document_the_json_encoder_wrote_for_every_kind_of_output() -> None:
    saga, placed_out = start(PLACED, CATALOG, Clock(AT, 0.0))
    saga, reserved_out = handle(saga, e.LineReserved("o1", "A", 2), Clock(AT, 1.0))
    saga, more = handle(saga, e.LineReserved("o1", "B", 1), Clock(AT, 2.0))
    status = next(m for m in more if isinstance(m, e.OrderStatusChanged))
    with_audit = dataclasses.replace(status, audit=tuple(m for m in more if isinstance(m, e.AuditEntry)))
    messages = [PLACED, *placed_out, *reserved_out, *more, with_audit]
    for m in messages:
        assert json.loads(records.encode(m)) == _document(m), type(m).__name__
    decoded = records.decode(records.encode(with_audit))
    assert decoded == with_audit and decoded.audit and decoded.audit[-1].data["to"] == "RESERVED"


def test_json_that_orjson_refuses_gets_the_standard_parsers_verdict() -> None:
    # An integer beyond 64 bits is valid JSON: the field check, not the parser, refuses it.
    raw = b'{"type":"ReserveLine","order_id":"o1","sku":"A","quantity":99999999999999999999999}'
    with pytest.raises(records.BadRecord) as err:
        records.decode(raw)
    assert "not JSON" not in str(err.value)
    with pytest.raises(records.BadRecord, match="U\\+0000 or unpaired surrogates"):
        records.decode(b'{"type":"ReserveLine","order_id":"\\ud800","sku":"A","quantity":1}')


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ({"a": ["x", {"b": "é"}], "n": 1}, True),
        ({"a": "\\u0000"}, True),  # a backslash and "u0000": text, not U+0000
        ({"a": "x\u0000"}, False),
        ({"k\u0000": 1}, False),  # in a key
        ({"a": [1, {"b": "\ud800"}]}, False),
        ({"a": 2**70, "b": "x\u0000"}, False),  # orjson cannot write it: the slow walk decides
        ({"a": 2**70, "b": "x"}, True),
    ],
)
def test_storable_agrees_with_a_walk_over_every_string(value: object, ok: bool) -> None:
    assert records.storable(value) is ok
    assert records._storable(value) is ok


def test_saga_to_value_reads_back_the_same_saga_with_plain_json_values() -> None:
    saga, _ = start(PLACED, CATALOG, Clock(AT, 0.0))
    saga = dataclasses.replace(saga, void=VoidState.REQUESTED)
    value = records.saga_to_value(saga)
    assert type(value["status"]) is str and type(value["void"]) is str
    assert json.loads(json.dumps(value)) == value
    assert records.saga_from_value(value) == saga
