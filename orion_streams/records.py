"""Wire formats: JSON envelopes on Kafka and table values, and where they meet domain types.

Every message is a JSON object with a "type". External producers write the same JSON, so
decoding is strict and raises `BadRecord` with a reason that goes to the dead-letter topic.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

import orjson

from .domain import commands as c
from .domain import events as e
from .domain.catalog import Catalog
from .domain.errors import UNKNOWN_SKU, ValidationFailed
from .domain.orders import OrderStatus
from .domain.saga import LineState, OrderSaga, SagaLine, VoidState
from .domain.stock import Hold, HoldState, StockLevel
from .schemas import parse_order_request

# --- Headers -------------------------------------------------------------------------------
# Producers' headers travel into logs, the audit trail, WebSocket messages and email headers:
# each one Orion reads is checked where it enters and dropped when unsafe.
CORRELATION_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_ROLES = re.compile(r"[A-Za-z0-9_.:\-]{1,64}(?:,[A-Za-z0-9_.:\-]{1,64}){0,15}")
ACTOR_LIMIT = 256


@functools.lru_cache(maxsize=8192)  # an order's headers come back at every step
def header_text(name: str, raw: bytes | str | None) -> tuple[str | None, str | None]:
    """A Kafka header's text if it is safe to pass on, else None and why it was dropped.

    `correlation-id` is a token of letters, digits and `._:-` (as X-Correlation-ID), at most
    128 characters; `actor-roles` a comma-separated list of such role names; any other header
    (`actor`) printable UTF-8 text of at most 256 characters without surrounding spaces.
    """
    if raw is None:
        return None, None
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None, "not UTF-8"
    else:
        text = str(raw)
    if name == "correlation-id":
        ok = CORRELATION_ID.fullmatch(text) is not None
        why = "not a token of at most 128 letters, digits or ._:-"
    elif name == "actor-roles":
        ok = _ROLES.fullmatch(text) is not None
        why = "not a comma-separated list of role names"
    else:
        ok = 0 < len(text) <= ACTOR_LIMIT and text.isprintable() and text == text.strip()
        why = f"empty, over {ACTOR_LIMIT} characters or not printable text"
    if ok:
        return text, None
    if any(ch in text for ch in "\r\n\x00") or not text.isprintable():
        why = "control characters"
    elif len(text) > (128 if name == "correlation-id" else ACTOR_LIMIT):
        why = f"{len(text)} characters, over the limit"
    return None, why


def utc_iso(when: datetime | float, timespec: str = "auto") -> str:
    """A moment as Orion writes it everywhere (records, the API, the live feed): ISO 8601
    in UTC with a Z, e.g. 2026-12-04T13:25:31.123Z with timespec="milliseconds"; `when` is a
    datetime or epoch seconds."""
    moment = when if isinstance(when, datetime) else datetime.fromtimestamp(when, UTC)
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def dead_letter(
    reason: str, kind: str, source_topic: str, at: str, details: Mapping[str, Any],
    headers: Sequence[tuple[str, bytes]] = (), correlation_id: str | None = None,
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The value and headers of a `dead-letters` record: why (`reason` for people, `kind`, a
    fixed class, for alerts), where it came from, when, and what the source says of itself
    (`details`); the same reasons and source in headers, so tools can filter without parsing.
    `correlation_id` must be a checked one (header_text, CORRELATION_ID)."""
    body = {"reason": reason, "reason_class": kind, "source_topic": source_topic, **details, "at": at}
    out = [("reason", reason.encode()[:1000]), ("reason-class", kind.encode()), ("source-topic", source_topic.encode())]
    out.extend(headers)
    if correlation_id:
        out.append(("correlation-id", correlation_id.encode()))
    return json.dumps(body).encode(), out


class BadRecord(Exception):
    """A message could not be decoded or broke the contract; carries the reason."""


class UnknownSku(BadRecord):
    """An OrderPlaced names a SKU the given catalog does not know (or no longer sells): the
    catalog may be older than the product, so the reader may refresh it and decode again."""


_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))
    return names


def _default(value: Any) -> Any:
    """What orjson cannot write natively (it writes dataclasses, enums and tuples itself)."""
    if isinstance(value, Mapping | MappingProxyType):
        return dict(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode(message: Any) -> bytes:
    """A domain command or event as compact JSON: its fields and its type name, written by
    orjson (nested dataclasses and enums natively)."""
    cls = type(message)
    if not is_dataclass(message) or isinstance(message, type):
        raise TypeError(f"not a message: {message!r}")
    body: dict[str, Any] = {"type": cls.__name__}
    for name in _field_names(cls):
        body[name] = getattr(message, name)
    if cls is e.OrderPlaced:
        # The public event contract nests the token, as the HTTP body does.
        body["payment"] = {"token": body.pop("payment_token")}
    return orjson.dumps(body, default=_default)


def _encodable(text: str) -> bool:
    """No unpaired surrogates: only those make UTF-8 encoding fail."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def storable(value: Any) -> bool:
    """Whether every string in parsed JSON is text PostgreSQL can store: no U+0000 and no
    unpaired surrogates, which JSON escapes can spell."""
    try:
        # orjson writes U+0000 as \u0000 and refuses unpaired surrogates: one pass in C
        # clears nearly every value (a literal backslash before "u0000" is looked at below).
        if b"\\u0000" not in orjson.dumps(value):
            return True
    except TypeError:  # surrogates, or what orjson cannot write (an integer beyond 64 bits)
        pass
    return _storable(value)


def _storable(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or not _encodable(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


class NotJson(ValueError):
    """Text that is not JSON (`str()` says why), or JSON nested too deeply to read."""

    def __init__(self, why: str, *, nested: bool = False) -> None:
        super().__init__(why)
        self.nested = nested


def parse_json(raw: bytes | str) -> Any:
    """JSON text as Python values, read by orjson. orjson refuses some JSON the standard
    parser takes (integers beyond 64 bits, lone surrogate escapes, NaN): for those the json
    module's verdict and words decide, as they always did."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise NotJson(str(exc)) from exc
        except RecursionError as exc:
            raise NotJson("nested too deeply", nested=True) from exc


def _loads(raw: Any) -> dict[str, Any]:
    if raw is None:
        raise BadRecord("empty value")
    if isinstance(raw, bytes | str):
        try:
            data: Any = parse_json(raw)
        except NotJson as exc:
            raise BadRecord("value is nested too deeply" if exc.nested else f"value is not JSON: {exc}") from exc
    else:  # an item of a batch record, parsed with it
        data = raw
    if not isinstance(data, dict):
        raise BadRecord("value must be a JSON object")
    if not storable(data):
        # PostgreSQL cannot store it: the projection would retry the write forever.
        raise BadRecord("text must not contain U+0000 or unpaired surrogates")
    if not isinstance(data.get("type"), str):
        raise BadRecord("value has no string 'type'")
    return data


def _str(data: Mapping[str, Any], name: str, *, required: bool = True) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise BadRecord(f"field '{name}' must be a non-empty string")
    return value


def _int(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRecord(f"field '{name}' must be an integer")
    return value


_FORBIDDEN_ORDER_FIELDS = frozenset({"status", "total", "price", "unit_price", "currency"})


def decode_order_placed(data: Mapping[str, Any], catalog: Catalog) -> e.OrderPlaced:
    """An OrderPlaced from any producer, validated exactly like an HTTP order."""
    order_id = _str(data, "order_id")
    forbidden = sorted(set(data) & _FORBIDDEN_ORDER_FIELDS)
    if forbidden:
        raise BadRecord(f"fields set by Orion may not be sent: {', '.join(forbidden)}")
    if len(order_id) > 100:
        raise BadRecord("field 'order_id' is longer than 100 characters")
    body = {k: data.get(k) for k in ("lines", "payment", "email") if k in data}
    try:
        request = parse_order_request(body, catalog)
    except ValidationFailed as exc:
        raise (UnknownSku if exc.has(UNKNOWN_SKU) else BadRecord)(f"invalid order: {exc}") from exc
    return e.OrderPlaced(
        event_id=_str(data, "event_id"),
        order_id=order_id,
        user_id=_str(data, "user_id"),
        email=request.email,
        lines=request.lines,
        payment_token=request.payment_token,
        placed_at=_str(data, "placed_at", required=False),
    )


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "str | None": lambda v: v is None or isinstance(v, str),
    "int | None": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    "Mapping[str, Any]": lambda v: isinstance(v, dict),
}


def _generic(cls: type[Any]) -> Callable[[Mapping[str, Any]], Any]:
    def decode(data: Mapping[str, Any]) -> Any:
        kwargs = {}
        for f in fields(cls):
            if f.name in data:
                value = data[f.name]
                check = _CHECKS.get(str(f.type))
                if check is not None and not check(value):
                    raise BadRecord(f"{cls.__name__}.{f.name} must be {f.type}, not {value!r}")
                kwargs[f.name] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise BadRecord(f"{cls.__name__}: {exc}") from exc

    return decode


def _status_changed(data: Mapping[str, Any]) -> e.OrderStatusChanged:
    lines = tuple(e.OrderLineView(**line) for line in data["lines"])
    previous = data.get("previous")
    return e.OrderStatusChanged(
        **{k: data[k] for k in ("order_id", "user_id", "email", "total", "currency", "version", "created_at", "at")},
        status=OrderStatus(data["status"]),
        previous=OrderStatus(previous) if previous else None,
        lines=lines,
        failure_reason=data.get("failure_reason"),
        audit=tuple(_audit_entry(entry) for entry in data.get("audit") or ()),
    )


def _audit_entry(data: Mapping[str, Any]) -> e.AuditEntry:
    if not isinstance(data, Mapping) or not isinstance(data.get("data", {}), Mapping):
        raise ValueError("an audit entry must be an object with an object 'data'")
    return e.AuditEntry(
        order_id=_str(data, "order_id"), seq=_int(data, "seq"), kind=_str(data, "kind"), at=_str(data, "at"),
        data=data.get("data") or {},
    )


_INTERNAL: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    cls.__name__: _generic(cls)
    for cls in (
        c.ReserveLine,
        c.ReleaseLine,
        c.CommitLine,
        c.AdjustStock,
        c.AuthorizePayment,
        c.VoidPayment,
        c.CancelOrder,
        c.FulfilOrder,
        e.LineReserved,
        e.LineRejected,
        e.LineReleased,
        e.LineCommitted,
        e.PaymentAuthorized,
        e.PaymentDeclined,
        e.PaymentTimedOut,
        e.PaymentVoided,
        e.PaymentVoidFailed,
        e.AuditEntry,
        e.StockLevelChanged,
        e.LowStockDetected,
        e.StockAdjusted,
        e.AdjustmentRejected,
    )
}
_INTERNAL["OrderStatusChanged"] = _status_changed


def decode(raw: Any, catalog: Catalog | None = None) -> Any:
    """Any Orion message from its JSON bytes (or, for an item of a batch record, its parsed
    object); raises BadRecord with the reason."""
    data = _loads(raw)
    kind = data["type"]
    if kind == "OrderPlaced":
        if catalog is None:
            raise BadRecord("OrderPlaced needs the catalog to be checked")
        return decode_order_placed(data, catalog)
    decoder = _INTERNAL.get(kind)
    if decoder is None:
        raise BadRecord(f"unknown message type {kind!r}")
    try:
        return decoder(data)
    except (KeyError, ValueError, TypeError) as exc:
        raise BadRecord(f"{kind}: {exc}") from exc


# --- Batch records ----------------------------------------------------------------------
# Orion's own requests and answers (stock-requests, order-events, payment-requests) travel as
# one record per batch and partition: {"type": "Batch", "items": [{"key", "headers", "value"}]}
# with the header `orion-batch`. A consumer pays Faust's cost per record once for all of them.
# Single records on those topics (another producer's AdjustStock, an older worker) still count.
BATCH_HEADER = "orion-batch"
BATCH_LIMIT = 500  # items per batch record
BATCH_BYTES = 256 * 1024  # encoded items per batch record, well under the broker's 1 MB limit

_Item = TypeVar("_Item", bound=tuple[Any, ...])


def chunks(items: list[_Item]) -> Iterator[list[_Item]]:
    """`items` (key, encoded message, ...) cut into batch records of at most BATCH_LIMIT
    items and, but for a single item, BATCH_BYTES of encoded messages."""
    chunk: list[_Item] = []
    size = 0
    for item in items:
        n = len(item[0]) + len(item[1])
        if chunk and (len(chunk) >= BATCH_LIMIT or size + n > BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += n
    if chunk:
        yield chunk


def encode_batch(items: list[tuple[str, bytes, list[tuple[str, bytes]]]]) -> bytes:
    """A batch record's value from (key, encoded message, headers) items, in their order."""
    parts = [
        b'{"key":' + orjson.dumps(key) + b',"headers":'
        + orjson.dumps([[name, value.decode("utf-8", "replace")] for name, value in headers])
        + b',"value":' + value + b"}"
        for key, value, headers in items
    ]
    return b'{"type":"Batch","items":[' + b",".join(parts) + b"]}"


def decode_batch(raw: Any) -> list[tuple[str, list[tuple[str, bytes]], Any]]:
    """The (key, headers, parsed message) items of a batch record (its bytes, or its value
    parsed already); raises BadRecord."""
    if raw is None:
        raise BadRecord("empty batch record")
    try:
        data = parse_json(raw) if isinstance(raw, bytes | str) else raw
    except NotJson as exc:
        raise BadRecord(f"batch record is not JSON: {exc}") from exc
    items = data.get("items") if isinstance(data, dict) and data.get("type") == "Batch" else None
    if not isinstance(items, list):
        raise BadRecord("a batch record must be an object with type 'Batch' and a list 'items'")
    out = []
    for i, item in enumerate(items):
        key, headers = (item.get("key"), item.get("headers")) if isinstance(item, dict) else (None, None)
        if not isinstance(key, str) or not isinstance(headers, list) or not all(
            isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in headers
        ):
            raise BadRecord(f"batch item {i} needs a string 'key' and 'headers' as [name, text] pairs")
        out.append((key, [(name, text.encode()) for name, text in headers], item.get("value")))
    return out


# Table values: plain dicts so the changelog stays JSON and small.


def saga_to_value(saga: OrderSaga) -> dict[str, Any]:
    value: dict[str, Any] = {name: getattr(saga, name) for name in _field_names(OrderSaga)}
    value["status"] = saga.status.value
    if saga.void is not None:
        value["void"] = saga.void.value
    value["lines"] = [
        [line.sku, line.quantity, line.unit_price, line.state.value, line.settled] for line in saga.lines
    ]
    return value


_SAGA_FIELDS = frozenset(f.name for f in fields(OrderSaga))


def saga_from_value(value: Mapping[str, Any]) -> OrderSaga:
    data = {k: v for k, v in value.items() if k in _SAGA_FIELDS}
    if "paying" not in value:  # written before the saga tracked its payment request
        data["paying"] = value.get("status") == "RESERVED"
    data["status"] = OrderStatus(data["status"])
    data["lines"] = tuple(
        SagaLine(sku, qty, price, LineState(state), settled)
        for sku, qty, price, state, settled in data["lines"]
    )
    if data.get("void") is not None:
        data["void"] = VoidState(data["void"])
    return OrderSaga(**data)


def stock_to_value(level: StockLevel) -> list[Any]:
    return [level.on_hand, level.reserved, level.low_stock_threshold, level.version]


def stock_from_value(sku: str, value: Any) -> StockLevel:
    if not value:
        return StockLevel(sku)
    on_hand, reserved, threshold, version = value[:4]
    return StockLevel(sku, on_hand, reserved, threshold, version)


def stock_entry(level: StockLevel, offset: Any, hold_key: str | None, hold_value: Any) -> list[Any]:
    """The stock row as stored: the level, the source position that produced it (an offset,
    or [offset, index] for an item of a batch record), and the hold
    written with it (a fixed-size value: only the latest hold rides along)."""
    return [*stock_to_value(level), offset, hold_key, hold_value]


def stock_entry_meta(value: Any) -> tuple[Any, str | None, Any]:
    """(source position, hold key, hold value) of a stored stock row; Nones for old rows."""
    if not value or len(value) < 7:
        return None, None, None
    return value[4], value[5], value[6]


def hold_key(sku: str, order_id: str) -> str:
    return f"{sku}\x1f{order_id}"


def adjustment_key(sku: str, adjustment_id: str) -> str:
    """Its own separator, so no order id can collide with an adjustment marker."""
    return f"{sku}\x1e{adjustment_id}"


def hold_to_value(hold: Hold, closed_at: float | None = None) -> list[Any]:
    """A hold as stored; a final hold carries when it closed (epoch seconds), so it can be
    retired a retention later, also after a restart."""
    value: list[Any] = [hold.quantity, hold.state.value]
    if closed_at is not None:
        value.append(closed_at)
    return value


def hold_from_value(sku: str, order_id: str, value: Any) -> Hold | None:
    if not value:
        return None
    quantity, state = value[:2]
    return Hold(order_id, sku, quantity, HoldState(state))


def closed_at(value: Any) -> float | None:
    """When a stored hold or adjustment marker became final; None while it is open (or
    for a value written before holds were retired)."""
    if isinstance(value, list) and len(value) >= 3 and isinstance(value[2], int | float):
        return float(value[2])
    return None
