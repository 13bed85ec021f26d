"""The HTTP API's shapes, declared once (pydantic v2): what a request may send, field by field,
and what a response holds.

Request bodies (`Body`) are strict JSON (1.0 is not an integer, "1" not a number) and closed
(an unknown field is refused, not ignored); query strings (`Query`) are converted ("20" is 20)
and may carry other parameters. `parse` gives a model or raises ValidationFailed naming every
bad field as the API promises (`lines[0].sku`, `payment.token`, `body` for the whole), with
what its `Says` declares. `/openapi.json` is generated from these models (web/openapi.py), so
the document and the checks cannot disagree. An order from any Kafka producer is checked with
the same model as one from HTTP (records.decode_order_placed); what needs the catalog is the
domain's (domain.orders.check_order). Limits are the domain's where the domain has them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError, core_schema

from .domain import errors, orders
from .domain.catalog import Catalog
from .domain.errors import ValidationFailed
from .domain.orders import MAX_LINES, MAX_QUANTITY, MAX_TOKEN_LENGTH, OrderStatus
from .domain.stock import ADJUSTMENT_REASONS

# Python's `\s` (str.isspace) as a regex class that reads the same in Rust (pydantic-core),
# ECMA-262 and Python regexes.
WHITESPACE = "\\t-\\r\\x1c- \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
EMAIL_PATTERN = f"^[^@{WHITESPACE}]{{1,64}}@[^@{WHITESPACE}]+\\.[^@{WHITESPACE}]{{2,}}$"
# An API key's name: 1 to MAX_NAME characters once surrounding whitespace is stripped (it is
# stored stripped).
MAX_NAME = 100
NAME_PATTERN = f"^[{WHITESPACE}]*[^{WHITESPACE}](?:[\\s\\S]{{0,{MAX_NAME - 2}}}[^{WHITESPACE}])?[{WHITESPACE}]*$"
MAX_ADJUSTMENT = 1_000_000
MAX_WAIT = 30.0
MAX_IDEMPOTENCY_KEY = 200
MAX_ORDER_PAGE = 100
MAX_STOCK_PAGE = 500
Scope = Literal["orders:read", "orders:write", "orders:fulfil", "inventory:read", "inventory:write", "ops"]
SCOPES = frozenset(get_args(Scope))
# Adjustment reasons people may give (the seed is Orion's own).
Reason = Literal["restock", "correction", "damage", "return"]
assert set(get_args(Reason)) == ADJUSTMENT_REASONS - {"seed"}

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Says:
    """What a 422 says of a field: `range` for a value out of bounds, `too_long` for one too long
    (when given), `message` for anything else. An error inside a field that holds no object (an
    item of a list of strings) is the field's."""

    message: str
    range: str | None = None
    too_long: str | None = None

    def of(self, kind: str) -> str:
        if self.range and kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            return self.range
        if self.too_long and kind in ("too_long", "string_too_long"):
            return self.too_long
        return self.message


class NotZero:
    """Annotation: refuses 0, and the JSON schema says so (`not: {const: 0}`)."""

    @staticmethod
    def _check(value: int) -> int:
        if value == 0:
            raise PydanticCustomError("not_zero", "must not be zero")
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> dict[str, Any]:
        return {**handler(schema), "not": {"const": 0}}


class Body(BaseModel):
    """A JSON object with these fields and no others."""

    model_config = ConfigDict(extra="forbid", strict=True)
    # What a 422 says of a value that is not such an object, and of a field it does not have.
    not_object: ClassVar[str] = "must be a JSON object"
    unknown: ClassVar[str] = "is not accepted"


class Query(BaseModel):
    """Query parameters: text converted to the field's type; other parameters are ignored."""

    model_config = ConfigDict(extra="ignore")


def parse(model: type[M], data: object) -> M:
    """`data` as a `model`, or ValidationFailed naming every bad field."""
    try:
        # The model's validator itself: model_validate's handling of its keywords costs as much
        # again as validating an order.
        valid: M = model.__pydantic_validator__.validate_python(data)
        return valid
    except ValidationError as exc:
        raise ValidationFailed(field_errors(model, exc)) from None


def field_errors(model: type[BaseModel], error: ValidationError) -> list[errors.FieldError]:
    """pydantic's errors as the API's: one per field and message, in pydantic's order."""
    found: dict[tuple[str, str], errors.FieldError] = {}
    for detail in error.errors(include_url=False, include_context=False, include_input=False):
        field_error = _field_error(model, detail["loc"], detail["type"], detail["msg"])
        found.setdefault((field_error.field, field_error.message), field_error)
    return list(found.values())


def _field_error(model: type[BaseModel], loc: tuple[int | str, ...], kind: str, msg: str) -> errors.FieldError:
    path, says = "", None
    inner: type[BaseModel] | None = model  # the model of the object at `path`, if any
    parts = list(loc)
    while parts and inner is not None:
        name = str(parts.pop(0))
        info = inner.model_fields.get(name)
        if info is None:  # a field the object does not have
            return errors.FieldError(_join(path, name), getattr(inner, "unknown", msg) if kind == "extra_forbidden" else msg)
        path, says, inner = _join(path, name), next((m for m in info.metadata if isinstance(m, Says)), None), None
        item, many = _model_in(info.annotation)
        if item is not None and not many:
            inner = item
        elif item is not None and parts and isinstance(parts[0], int):
            path, says, inner = f"{path}[{parts.pop(0)}]", None, item
    if says is not None:
        return errors.FieldError(path or "body", says.of(kind))
    return errors.FieldError(path or "body", getattr(inner, "not_object", msg))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a field holds, and whether it holds a list of them."""
    if get_origin(annotation) is list:
        return _model_in(get_args(annotation)[0])[0], True
    return (annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None), False


# --- Requests -----------------------------------------------------------------------------


class OrderLineRequest(Body):
    not_object: ClassVar[str] = "must be an object with sku and quantity"
    unknown: ClassVar[str] = "is not accepted; prices are set by Orion"

    sku: Annotated[str, Field(min_length=1, description="A SKU of the catalog (`GET /v1/products`); "
                                                         "an unknown or inactive one is a 422"), Says("is required")]
    quantity: Annotated[int, Field(ge=1, le=MAX_QUANTITY, description="A JSON whole number (1.0 is refused)"),
                        Says("must be a whole number", range=f"must be between 1 and {MAX_QUANTITY}")]


class PaymentRequest(Body):
    not_object: ClassVar[str] = "must be an object with a token"

    token: Annotated[str, Field(min_length=1, max_length=MAX_TOKEN_LENGTH, pattern=f"[^{WHITESPACE}]",
                                description="Sandbox: tok_ok approves, tok_timeout never answers, anything "
                                            "else declines"),
                     Says("is required", too_long=f"at most {MAX_TOKEN_LENGTH} characters")]


class OrderRequest(Body):
    """Prices, status, totals and the owner are set by Orion; sending them is a 422."""

    unknown: ClassVar[str] = "is not accepted; prices, status and owner are set by Orion"

    lines: Annotated[list[OrderLineRequest], Field(min_length=1, max_length=MAX_LINES, description=(
        f"Lines of the same SKU are merged; a SKU's total quantity is at most {MAX_QUANTITY}")),
        Says("must be a non-empty list", too_long=f"at most {MAX_LINES} lines per order")]
    payment: PaymentRequest
    email: Annotated[str, Field(max_length=254, pattern=EMAIL_PATTERN), Says("must be a valid email address")]


def parse_order_request(body: object, catalog: Catalog) -> orders.OrderRequest:
    """An order from any source (HTTP, or OrderPlaced from any producer): its shape checked by
    OrderRequest, then the catalog's checks; ValidationFailed lists every problem at once."""
    try:
        order: OrderRequest = OrderRequest.__pydantic_validator__.validate_python(body)
    except ValidationError as exc:
        found = field_errors(OrderRequest, exc)
        return orders.check_order(_well_formed_lines(body, found), "", "", catalog, found)
    lines = [(line.sku, line.quantity) for line in order.lines]
    return orders.check_order(lines, order.payment.token, order.email, catalog)


def _well_formed_lines(body: object, found: Sequence[errors.FieldError]) -> list[tuple[str | None, int | None]]:
    """(sku, quantity) of each line of a refused order, None where the model refused it: the
    catalog checks the SKUs all the same."""
    bad = {e.field for e in found}
    if "body" in bad or "lines" in bad or not isinstance(body, Mapping):
        return []
    out: list[tuple[str | None, int | None]] = []
    for i, line in enumerate(body["lines"]):
        where = f"lines[{i}]"
        whole = not any(field == where or field.startswith(f"{where}.") for field in bad)
        sku = where not in bad and f"{where}.sku" not in bad
        out.append((line["sku"] if sku else None, line["quantity"] if whole else None))
    return out


class PlaceOrderQuery(Query):
    wait: Annotated[float, Field(ge=0, le=MAX_WAIT, description="Seconds to wait for the order to be decided"),
                    Says("must be a number of seconds", range=f"must be between 0 and {MAX_WAIT:g}")] = 0.0


CURSOR = "`next_cursor` of the previous page; anything else is a 422"


class OrderListQuery(Query):
    status: Annotated[OrderStatus | SkipJsonSchema[None], Says(f"one of {', '.join(OrderStatus)}")] = None
    limit: Annotated[int, Field(ge=1, le=MAX_ORDER_PAGE, description="Page size"),
                     Says("must be a whole number", range=f"must be between 1 and {MAX_ORDER_PAGE}")] = 20
    cursor: Annotated[str | SkipJsonSchema[None], Field(description=CURSOR)] = None
    user_id: Annotated[str | SkipJsonSchema[None], Field(
        description="Admins and services: one user's orders; ignored for everyone else")] = None


class StockListQuery(Query):
    limit: Annotated[int, Field(ge=1, le=MAX_STOCK_PAGE, description="Page size"),
                     Says("must be a whole number", range=f"must be between 1 and {MAX_STOCK_PAGE}")] = 50
    cursor: Annotated[str | SkipJsonSchema[None], Field(description=CURSOR)] = None


class AdjustmentRequest(Body):
    delta: Annotated[int, Field(ge=-MAX_ADJUSTMENT, le=MAX_ADJUSTMENT, description=(
        "Units to add (negative: remove); not zero")), NotZero(),
        Says(f"must be a non-zero whole number up to {MAX_ADJUSTMENT}")]
    reason: Annotated[Reason, Says(f"one of {', '.join(get_args(Reason))}")]
    low_stock_threshold: Annotated[int | None, Field(ge=0, le=MAX_ADJUSTMENT, description=(
        "A new threshold; absent or null keeps the current one")),
        Says(f"must be a whole number from 0 to {MAX_ADJUSTMENT}")] = None


class ApiKeyRequest(Body):
    name: Annotated[str, Field(pattern=NAME_PATTERN, description=(
        f"1 to {MAX_NAME} characters, stored without surrounding whitespace")),
        Says(f"must be a string of 1 to {MAX_NAME} characters")]
    scopes: Annotated[list[Scope], Field(min_length=1), Says(f"a non-empty list of: {', '.join(sorted(SCOPES))}")]


# --- Responses (the views build them as dicts; these describe them) ------------------------


class FieldError(Body):
    field: str
    message: str


class Problem(Body):
    """RFC 9457 problem details; `errors` is empty except on 422."""

    type: Annotated[str, Field(pattern="^https://orion\\.dev/problems/[a-z0-9-]+$", json_schema_extra={"format": "uri"})]
    title: str
    status: Annotated[int, Field(ge=400, le=599)]
    detail: str
    errors: Annotated[list[FieldError], Field(max_length=0)]


class ValidationProblem(Body):
    """A 422: every invalid field with why (empty when an Idempotency-Key was reused with a
    different request)."""

    type: Literal["https://orion.dev/problems/unprocessable-content"]
    title: Literal["Unprocessable Content"]
    status: Literal[422]
    detail: str
    errors: list[FieldError]


class OrderLine(Body):
    sku: str
    quantity: Annotated[int, Field(ge=1)]
    unit_price: Annotated[int, Field(description="Minor units of the order's currency")]
    line_total: int


class Order(Body):
    order_id: str
    user_id: str
    status: OrderStatus
    lines: list[OrderLine]
    total: Annotated[int, Field(description="Minor units")]
    currency: Annotated[str, Field(max_length=3)]
    created_at: datetime
    updated_at: datetime
    failure_reason: str | None


class OrderPage(Body):
    items: list[Order]
    next_cursor: str | None


class Links(Body):
    self: Annotated[str, Field(pattern="^/v1/orders/")]


class OrderAccepted(Body):
    order_id: str
    status: Literal["PENDING"]
    links: Links


class CancelAccepted(Body):
    order_id: str
    status: Literal["CANCELLING", "CANCELLED"]
    links: Links


class FulfilAccepted(Body):
    order_id: str
    links: Links


class OrderEvent(Body):
    seq: Annotated[int, Field(ge=1)]
    type: Annotated[str, Field(description="The event's type, e.g. OrderPlaced, LineReserved, PaymentAuthorized")]
    at: datetime
    data: dict[str, Any]
    correlation_id: str | None
    actor: str | None
    actor_roles: Annotated[list[str], Field(description="Roles of the actor, when known")]


class OrderEventList(Body):
    items: list[OrderEvent]
    next_cursor: None


class Product(Body):
    sku: str
    name: str
    unit_price: int
    currency: Annotated[str, Field(max_length=3)]
    active: bool
    category: Annotated[str, Field(description="The SKU class metrics group reservations by")]


class ProductList(Body):
    items: list[Product]
    next_cursor: None


class StockLevel(Body):
    sku: str
    on_hand: int
    reserved: int
    available: Annotated[int, Field(description="on_hand - reserved")]
    low_stock_threshold: int
    low_stock: Annotated[bool, Field(description="available <= low_stock_threshold")]


class StockPage(Body):
    items: list[StockLevel]
    next_cursor: str | None


class AdjustmentApplied(Body):
    adjustment_id: str
    status: Literal["applied"]
    level: StockLevel | None


class AdjustmentPending(Body):
    adjustment_id: str
    status: Literal["pending"]


class Notification(Body):
    id: str
    order_id: str | None
    sku: str | None
    template: str
    recipient: Annotated[str, Field(description="Comma-separated addresses")]
    subject: str | None
    status: Literal["queued", "sent", "failed"]
    attempts: Annotated[int, Field(ge=0)]
    last_error: str | None
    server: str | None
    message_id: str | None
    correlation_id: str | None
    created_at: datetime
    updated_at: datetime
    next_attempt_at: Annotated[datetime | None, Field(description="Set while queued")]
    sent_at: datetime | None


class NotificationList(Body):
    items: list[Notification]
    next_cursor: None


class ApiKey(Body):
    id: str
    name: str
    prefix: Annotated[str, Field(description="The key's first characters, to recognise it")]
    scopes: list[Scope]
    created_by: Annotated[str, Field(description="The admin who created it (actor)")]
    created_at: datetime
    last_used_at: Annotated[datetime | None, Field(description="Updated at most once a minute")]
    revoked_at: datetime | None
    active: Annotated[bool, Field(description="Not revoked")]


class ApiKeyCreated(ApiKey):
    key: Annotated[str, Field(pattern="^orion_", description="The key itself: shown only now")]


class ApiKeyList(Body):
    items: list[ApiKey]
    next_cursor: None


class Health(Body):
    status: Literal["ok"]
    worker: str


class Admission(Body):
    """Admission control: orders in flight over the decision rate (the wait a new order faces)
    against ORION_MAX_DECISION_DELAY, and orders in flight against ORION_MAX_IN_FLIGHT."""

    open: Annotated[bool, Field(description="Whether POST /v1/orders takes new orders now")]
    reason: str | None
    in_flight: int | None
    decisions_per_second: float | None
    queue_delay_seconds: float | None
    reading_age_seconds: float | None
    stale: Annotated[bool, Field(description="No fresh reading of the load: the door stays open")]
    max_decision_delay_seconds: float
    max_in_flight: int


class Ready(Body):
    status: Literal["ready"]
    admission: Admission


class NotReady(Body):
    status: Literal["unavailable"]
    missing: Annotated[list[str], Field(min_length=1)]
    admission: Admission
