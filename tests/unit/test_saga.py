"""The order saga: reserve every line, take payment, compensate on failure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from orion_streams.domain.catalog import Catalog, Product
from orion_streams.domain.commands import (
    AuthorizePayment,
    CancelOrder,
    CommitLine,
    FulfilOrder,
    ReleaseLine,
    ReserveLine,
    VoidPayment,
)
from orion_streams.domain.errors import ValidationFailed
from orion_streams.domain.events import (
    AuditEntry,
    LineCommitted,
    LineRejected,
    LineReleased,
    LineReserved,
    OrderLineView,
    OrderPlaced,
    OrderStatusChanged,
    PaymentAuthorized,
    PaymentDeclined,
    PaymentTimedOut,
    PaymentVoided,
    PaymentVoidFailed,
)
from orion_streams.domain.orders import OrderStatus, RequestedLine
from orion_streams.domain.saga import (
    Clock,
    LineState,
    OrderSaga,
    SagaInput,
    SagaOutput,
    VoidState,
    handle,
    outstanding,
    retirable,
    start,
)

S = OrderStatus
CATALOG = Catalog(
    [
        Product("A", "Lamp", 1_000),
        Product("B", "Mouse", 250),
        Product("OLD", "Retired", 99, active=False),
        Product("USD", "Import", 500, currency="USD"),
    ]
)
NOW = Clock(iso="2024-05-01T12:00:00Z", epoch=1_000.0)
LATER = Clock(iso="2024-05-01T12:00:05Z", epoch=1_005.0)
Factory = Callable[[], OrderSaga]


def placed(*lines: tuple[str, int], placed_at: str = "2024-05-01T11:59:59Z") -> OrderPlaced:
    return OrderPlaced(
        event_id="ev-1",
        order_id="o1",
        user_id="u1",
        email="ada@example.com",
        lines=tuple(RequestedLine(sku, qty) for sku, qty in (lines or (("A", 2), ("B", 4)))),
        payment_token="tok_visa",
        placed_at=placed_at,
    )


def step(saga: OrderSaga, msg: SagaInput, now: Clock = LATER) -> tuple[OrderSaga, list[SagaOutput]]:
    return handle(saga, msg, now)


def run(saga: OrderSaga, *msgs: SagaInput) -> tuple[OrderSaga, list[SagaOutput]]:
    """Apply messages in turn; return the final saga and every output."""
    out: list[SagaOutput] = []
    for msg in msgs:
        saga, more = step(saga, msg)
        out.extend(more)
    return saga, out


def only(out: list[SagaOutput], cls: type) -> list[SagaOutput]:
    return [m for m in out if isinstance(m, cls)]


def statuses(out: list[SagaOutput]) -> list[OrderStatus]:
    return [m.status for m in out if isinstance(m, OrderStatusChanged)]


def line_states(saga: OrderSaga) -> dict[str, LineState]:
    return {line.sku: line.state for line in saga.lines}


def pending() -> OrderSaga:
    return start(placed(), CATALOG, NOW)[0]


def reserved() -> OrderSaga:
    return run(pending(), LineReserved("o1", "A", 2), LineReserved("o1", "B", 4))[0]


def confirmed() -> OrderSaga:
    return step(reserved(), PaymentAuthorized("o1", "auth-1"))[0]


def fulfilled() -> OrderSaga:
    return step(confirmed(), FulfilOrder("o1", "ev-f"))[0]


# --- start ---------------------------------------------------------------------------


def test_start_prices_lines_from_the_catalog_and_asks_for_each() -> None:
    saga, out = start(placed(), CATALOG, NOW)
    assert saga.status is S.PENDING
    assert [(ln.sku, ln.quantity, ln.unit_price, ln.state) for ln in saga.lines] == [
        ("A", 2, 1_000, LineState.PENDING),
        ("B", 4, 250, LineState.PENDING),
    ]
    assert saga.total == 3_000 and saga.currency == "EUR"
    assert saga.created_at == "2024-05-01T11:59:59Z" and saga.updated_at == NOW.iso
    assert only(out, ReserveLine) == [ReserveLine("o1", "A", 2), ReserveLine("o1", "B", 4)]


def test_start_emits_pending_status_and_order_placed_audit() -> None:
    _, out = start(placed(), CATALOG, NOW)
    [status] = only(out, OrderStatusChanged)
    assert isinstance(status, OrderStatusChanged)
    assert (status.status, status.previous, status.total, status.currency) == (
        S.PENDING,
        None,
        3_000,
        "EUR",
    )
    assert status.lines == (OrderLineView("A", 2, 1_000), OrderLineView("B", 4, 250))
    [audit] = only(out, AuditEntry)
    assert isinstance(audit, AuditEntry)
    assert (audit.order_id, audit.seq, audit.kind, audit.at) == ("o1", 1, "OrderPlaced", NOW.iso)
    assert audit.data["total"] == 3_000
    assert audit.data["lines"][0] == {"sku": "A", "quantity": 2, "unit_price": 1_000}


def test_start_without_placed_at_uses_now() -> None:
    saga, _ = start(placed(placed_at=""), CATALOG, NOW)
    assert saga.created_at == NOW.iso


@pytest.mark.parametrize(
    "lines",
    [
        (("NOPE", 1),),
        (("OLD", 1),),
        (("A", 1), ("A", 2)),
        (("A", 0),),
        (("A", 1001),),
        (("A", 1), ("USD", 1)),
    ],
)
def test_start_refuses_an_invalid_order(lines: tuple[tuple[str, int], ...]) -> None:
    with pytest.raises(ValidationFailed):
        start(placed(*lines), CATALOG, NOW)


def test_start_on_unknown_sku_names_it() -> None:
    with pytest.raises(ValidationFailed, match="unknown SKU 'NOPE'"):
        start(placed(("NOPE", 1)), CATALOG, NOW)


def test_start_refuses_missing_token_and_user() -> None:
    bad = replace(placed(), payment_token="", user_id="")
    with pytest.raises(ValidationFailed) as info:
        start(bad, CATALOG, NOW)
    assert {e.field for e in info.value.errors} == {"payment.token", "order_id"}


# --- reservation ---------------------------------------------------------------------


def test_first_reserved_line_waits_for_the_others() -> None:
    saga, out = step(pending(), LineReserved("o1", "A", 2))
    assert saga.status is S.PENDING
    assert line_states(saga) == {"A": LineState.RESERVED, "B": LineState.PENDING}
    assert statuses(out) == [] and only(out, AuthorizePayment) == []


def test_all_lines_reserved_asks_for_payment() -> None:
    saga, out = run(pending(), LineReserved("o1", "A", 2), LineReserved("o1", "B", 4))
    assert saga.status is S.RESERVED
    assert statuses(out) == [S.RESERVED]
    assert only(out, AuthorizePayment) == [AuthorizePayment("o1", 3_000, "EUR", "tok_visa")]
    assert saga.paying


def test_one_rejected_line_rejects_the_order_and_releases_reserved_lines() -> None:
    saga, out = run(
        pending(), LineReserved("o1", "A", 2), LineRejected("o1", "B", 4, 1, "B out of stock")
    )
    assert saga.status is S.REJECTED
    assert saga.failure_reason == "B out of stock"
    assert only(out, ReleaseLine) == [ReleaseLine("o1", "A")]
    assert line_states(saga) == {"A": LineState.RELEASED, "B": LineState.REJECTED}
    assert only(out, AuthorizePayment) == []


def test_rejection_before_any_reservation_releases_nothing() -> None:
    saga, out = step(pending(), LineRejected("o1", "A", 2, 0, "A out of stock"))
    assert saga.status is S.REJECTED
    assert only(out, ReleaseLine) == []


def test_reservation_arriving_after_the_order_failed_is_given_back() -> None:
    failed, _ = step(pending(), LineRejected("o1", "A", 2, 0, "A out of stock"))
    saga, out = step(failed, LineReserved("o1", "B", 4))
    assert saga.status is S.REJECTED
    assert only(out, ReleaseLine) == [ReleaseLine("o1", "B")]
    assert statuses(out) == []
    assert line_states(saga)["B"] is LineState.RELEASED


def test_second_rejection_after_failure_keeps_the_first_reason() -> None:
    failed, _ = step(pending(), LineRejected("o1", "A", 2, 0, "first"))
    saga, out = step(failed, LineRejected("o1", "B", 4, 0, "second"))
    assert saga.failure_reason == "first"
    assert statuses(out) == [] and only(out, ReleaseLine) == []


def test_reply_for_a_sku_not_in_the_order_is_ignored() -> None:
    saga = pending()
    assert step(saga, LineReserved("o1", "ZZZ", 1)) == (saga, [])
    assert step(saga, LineRejected("o1", "ZZZ", 1, 0, "x")) == (saga, [])


# --- payment -------------------------------------------------------------------------


def test_payment_authorized_confirms_the_order() -> None:
    saga, out = step(reserved(), PaymentAuthorized("o1", "auth-1"))
    assert saga.status is S.CONFIRMED
    assert statuses(out) == [S.CONFIRMED]
    assert not saga.paying and saga.authorization_id == "auth-1"
    assert only(out, ReleaseLine) == [] and only(out, VoidPayment) == []


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (PaymentDeclined("o1", "card expired"), "payment declined: card expired"),
        (PaymentTimedOut("o1"), "payment timed out"),
    ],
)
def test_payment_failure_releases_every_line(msg: SagaInput, reason: str) -> None:
    saga, out = step(reserved(), msg)
    assert saga.status is S.PAYMENT_FAILED
    assert saga.failure_reason == reason
    assert statuses(out) == [S.PAYMENT_FAILED]
    assert only(out, ReleaseLine) == [ReleaseLine("o1", "A"), ReleaseLine("o1", "B")]
    assert set(line_states(saga).values()) == {LineState.RELEASED}
    assert not saga.paying


@pytest.mark.parametrize(
    "msg", [PaymentAuthorized("o1", "auth-1"), PaymentDeclined("o1", "no"), PaymentTimedOut("o1")]
)
def test_payment_answer_while_pending_is_ignored(msg: SagaInput) -> None:
    saga = pending()
    assert step(saga, msg) == (saga, [])


def test_a_declined_payment_needs_no_void() -> None:
    saga, out = step(reserved(), PaymentDeclined("o1", "card expired"))
    assert only(out, VoidPayment) == [] and saga.void is None


def test_a_payment_without_a_definite_answer_is_voided_by_its_key() -> None:
    saga, out = step(reserved(), PaymentTimedOut("o1", "payment provider unavailable: 503"))
    assert saga.status is S.PAYMENT_FAILED
    assert saga.failure_reason == "payment provider unavailable: 503"
    assert only(out, VoidPayment) == [VoidPayment("o1", None, 3_000, "EUR")]
    assert saga.void is VoidState.REQUESTED
    assert [m.kind for m in only(out, AuditEntry)][-1] == "PaymentVoidRequested"


# --- payment asked alongside the reservations (start(..., pay_now=True)) --------------


def paying_early() -> OrderSaga:
    return start(placed(), CATALOG, NOW, pay_now=True)[0]


def test_pay_now_asks_for_the_payment_with_the_reservations() -> None:
    saga, out = start(placed(), CATALOG, NOW, pay_now=True)
    assert only(out, ReserveLine) == [ReserveLine("o1", "A", 2), ReserveLine("o1", "B", 4)]
    assert only(out, AuthorizePayment) == [AuthorizePayment("o1", 3_000, "EUR", "tok_visa")]
    assert saga.status is S.PENDING and saga.paying
    assert AuthorizePayment("o1", 3_000, "EUR", "tok_visa") in outstanding(saga)


def test_paid_before_the_lines_are_held_confirms_with_the_last_line() -> None:
    saga, out = run(paying_early(), PaymentAuthorized("o1", "auth-1"), LineReserved("o1", "A", 2))
    assert saga.status is S.PENDING and saga.authorization_id == "auth-1" and not saga.paying
    assert statuses(out) == []
    saga, out = step(saga, LineReserved("o1", "B", 4))
    assert statuses(out) == [S.RESERVED, S.CONFIRMED]
    assert only(out, AuthorizePayment) == [] and only(out, VoidPayment) == []
    assert not outstanding(saga)


def test_lines_held_before_the_payment_answers_wait_for_it_without_asking_twice() -> None:
    saga, out = run(paying_early(), LineReserved("o1", "A", 2), LineReserved("o1", "B", 4))
    assert saga.status is S.RESERVED and statuses(out) == [S.RESERVED]
    assert only(out, AuthorizePayment) == []  # already asked at the start
    saga, out = step(saga, PaymentAuthorized("o1", "auth-1"))
    assert saga.status is S.CONFIRMED and statuses(out) == [S.CONFIRMED]


def test_paid_but_a_line_rejected_voids_the_authorisation() -> None:
    saga, out = run(
        paying_early(), PaymentAuthorized("o1", "auth-1"), LineReserved("o1", "A", 2),
        LineRejected("o1", "B", 4, 1, "insufficient stock"),
    )
    assert saga.status is S.REJECTED
    assert only(out, ReleaseLine) == [ReleaseLine("o1", "A")]
    assert only(out, VoidPayment) == [VoidPayment("o1", "auth-1", 3_000, "EUR")]
    assert saga.void is VoidState.REQUESTED and not retirable(saga)
    saga, _ = run(saga, PaymentVoided("o1", "auth-1", "voided"), LineReleased("o1", "A", 2))
    assert retirable(saga)


def test_rejected_while_the_payment_is_in_flight_voids_it_when_it_comes() -> None:
    saga, out = step(paying_early(), LineRejected("o1", "A", 2, 0, "insufficient stock"))
    assert saga.status is S.REJECTED and only(out, VoidPayment) == []
    assert not retirable(saga)  # the payment's answer is still awaited
    saga, out = step(saga, PaymentAuthorized("o1", "auth-1"))
    assert only(out, VoidPayment) == [VoidPayment("o1", "auth-1", 3_000, "EUR")]
    saga, out = step(saga, PaymentDeclined("o1", "no"))
    assert out == []


def test_declined_before_the_lines_are_held_fails_the_order_once_they_are() -> None:
    saga, out = run(paying_early(), PaymentDeclined("o1", "card expired"), LineReserved("o1", "A", 2))
    assert saga.status is S.PENDING and statuses(out) == []
    saga, out = step(saga, LineReserved("o1", "B", 4))
    assert statuses(out) == [S.RESERVED, S.PAYMENT_FAILED]
    assert saga.failure_reason == "payment declined: card expired"
    assert only(out, ReleaseLine) == [ReleaseLine("o1", "A"), ReleaseLine("o1", "B")]
    assert only(out, AuthorizePayment) == [] and only(out, VoidPayment) == []


def test_declined_and_a_line_rejected_is_a_rejection() -> None:
    saga, _ = run(paying_early(), PaymentDeclined("o1", "card expired"), LineRejected("o1", "A", 2, 0, "none"))
    assert saga.status is S.REJECTED and saga.failure_reason == "none"


def test_timed_out_before_the_lines_are_held_voids_by_key_and_a_late_authorisation_too() -> None:
    saga, out = step(paying_early(), PaymentTimedOut("o1", "provider unavailable"))
    assert saga.status is S.PENDING and only(out, VoidPayment) == [VoidPayment("o1", None, 3_000, "EUR")]
    # The void by key found nothing; the provider authorised afterwards: that one goes back.
    saga, _ = step(saga, PaymentVoided("o1", None, "nothing"))
    saga, out = step(saga, PaymentAuthorized("o1", "auth-late"))
    assert only(out, VoidPayment) == [VoidPayment("o1", "auth-late", 3_000, "EUR")]
    saga, out = run(saga, LineReserved("o1", "A", 2), LineReserved("o1", "B", 4))
    assert saga.status is S.PAYMENT_FAILED and statuses(out) == [S.RESERVED, S.PAYMENT_FAILED]
    assert only(out, VoidPayment) == []  # asked for already


def test_cancelled_after_an_early_authorisation_voids_it() -> None:
    saga, out = run(paying_early(), PaymentAuthorized("o1", "auth-1"), CancelOrder("o1", "ev-c", "changed my mind"))
    assert saga.status is S.CANCELLED
    assert only(out, VoidPayment) == [VoidPayment("o1", "auth-1", 3_000, "EUR")]


def timed_out() -> OrderSaga:
    return step(reserved(), PaymentTimedOut("o1"))[0]


def test_a_late_authorisation_after_a_timeout_is_covered_by_the_void_in_flight() -> None:
    saga, out = step(timed_out(), PaymentAuthorized("o1", "auth-late"))
    assert saga.status is S.PAYMENT_FAILED and saga.authorization_id == "auth-late"
    assert only(out, VoidPayment) == [] and statuses(out) == []
    [audit] = only(out, AuditEntry)
    assert audit.kind == "PaymentAuthorized" and audit.data == {"authorization_id": "auth-late", "late": True}


def test_a_void_by_key_that_found_nothing_is_repeated_for_a_late_authorisation() -> None:
    late, _ = step(timed_out(), PaymentAuthorized("o1", "auth-late"))
    saga, out = step(late, PaymentVoided("o1", None, "nothing"))
    assert only(out, VoidPayment) == [VoidPayment("o1", "auth-late", 3_000, "EUR")]
    assert saga.void is VoidState.REQUESTED
    done, out = step(saga, PaymentVoided("o1", "auth-late", "voided"))
    assert done.void is VoidState.VOIDED and only(out, VoidPayment) == []
    assert not retirable(done)  # the releases are still to be confirmed
    assert retirable(run(done, LineReleased("o1", "A", 2), LineReleased("o1", "B", 4))[0])


def test_an_authorisation_after_a_cancel_is_voided_once() -> None:
    cancelled, _ = step(reserved(), CancelOrder("o1", "ev-c"))
    assert cancelled.paying and not retirable(cancelled)  # the payment's answer is awaited
    saga, out = step(cancelled, PaymentAuthorized("o1", "auth-1"))
    assert saga.status is S.CANCELLED
    assert only(out, VoidPayment) == [VoidPayment("o1", "auth-1", 3_000, "EUR")]
    assert step(saga, PaymentAuthorized("o1", "auth-1")) == (saga, [])


def test_a_timeout_after_a_cancel_voids_by_key() -> None:
    cancelled, _ = step(reserved(), CancelOrder("o1", "ev-c"))
    saga, out = step(cancelled, PaymentTimedOut("o1"))
    assert saga.status is S.CANCELLED and statuses(out) == []
    assert only(out, VoidPayment) == [VoidPayment("o1", None, 3_000, "EUR")]


def test_a_decline_after_a_cancel_needs_nothing_more() -> None:
    cancelled, _ = step(reserved(), CancelOrder("o1", "ev-c"))
    saga, out = step(cancelled, PaymentDeclined("o1", "no"))
    assert saga.status is S.CANCELLED and only(out, VoidPayment) == [] and not saga.paying


def test_cancelling_a_confirmed_order_voids_its_authorisation() -> None:
    saga, out = step(confirmed(), CancelOrder("o1", "ev-c"))
    assert saga.status is S.CANCELLED
    assert only(out, VoidPayment) == [VoidPayment("o1", "auth-1", 3_000, "EUR")]
    refunded, out = step(saga, PaymentVoided("o1", "auth-1", "refunded"))
    assert refunded.void is VoidState.REFUNDED
    assert [m.kind for m in only(out, AuditEntry)] == ["PaymentRefunded"]


def test_a_void_that_failed_is_recorded_and_a_later_success_still_counts() -> None:
    saga, _ = step(confirmed(), CancelOrder("o1", "ev-c"))
    failed, out = step(saga, PaymentVoidFailed("o1", "provider down"))
    assert failed.void is VoidState.FAILED
    assert [m.kind for m in only(out, AuditEntry)] == ["PaymentVoidFailed"]
    voided, _ = step(failed, PaymentVoided("o1", "auth-1", "voided"))
    assert voided.void is VoidState.VOIDED


def test_void_answers_without_a_request_are_ignored() -> None:
    saga = confirmed()
    assert step(saga, PaymentVoided("o1", "auth-1", "voided")) == (saga, [])
    assert step(saga, PaymentVoidFailed("o1", "x")) == (saga, [])


# --- what the saga waits for, and when it may be forgotten ---------------------------


def kinds(saga: OrderSaga) -> list[tuple[str, str]]:
    return [(type(r).__name__, getattr(r, "sku", "")) for r in outstanding(saga)]


def test_outstanding_requests_follow_the_order() -> None:
    assert kinds(pending()) == [("ReserveLine", "A"), ("ReserveLine", "B")]
    assert kinds(step(pending(), LineReserved("o1", "A", 2))[0]) == [("ReserveLine", "B")]
    assert kinds(reserved()) == [("AuthorizePayment", "")]
    assert kinds(confirmed()) == []
    assert kinds(fulfilled()) == [("CommitLine", "A"), ("CommitLine", "B")]
    assert kinds(timed_out()) == [("ReleaseLine", "A"), ("ReleaseLine", "B"), ("VoidPayment", "")]


def test_an_order_is_retirable_once_it_ended_and_every_answer_came() -> None:
    assert not retirable(pending()) and not retirable(confirmed())
    saga = fulfilled()
    assert not retirable(saga)
    saga, _ = run(saga, LineCommitted("o1", "A", 2), LineCommitted("o1", "B", 4))
    assert retirable(saga)
    rejected, _ = step(pending(), LineRejected("o1", "A", 2, 0, "gone"))
    assert not retirable(rejected)  # B's answer is still to come: if reserved, it goes back
    rejected, _ = step(rejected, LineRejected("o1", "B", 4, 0, "gone"))
    assert retirable(rejected)


def test_a_release_answer_for_a_line_never_reserved_rejects_it() -> None:
    saga, out = step(pending(), LineReleased("o1", "A", 0))
    assert saga.status is S.REJECTED and line_states(saga)["A"] is LineState.REJECTED
    assert saga.failure_reason == "A: no stock could be held"


def test_a_reservation_answer_after_the_line_settled_is_given_back_and_changes_nothing() -> None:
    # A replayed answer (consumer offsets reset), or a hold a stray repeat made after the old
    # one was retired: whatever is held goes back, and the order and its audit trail stay as
    # they were (a replay must not add to them). Until the release is sent, the answer is
    # not acknowledged, so a crash in between brings it back and it is sent then.
    saga, _ = run(timed_out(), LineReleased("o1", "A", 2))
    for _ in range(2):
        again, out = step(saga, LineReserved("o1", "A", 2))
        assert out == [ReleaseLine("o1", "A")]
        assert again == saga
    assert step(saga, LineReleased("o1", "A", 2)) == (saga, [])  # the owner's answer to it


# --- cancel and fulfil ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("saga_at", "released"),
    [
        (pending, []),
        (lambda: step(pending(), LineReserved("o1", "A", 2))[0], [ReleaseLine("o1", "A")]),
        (reserved, [ReleaseLine("o1", "A"), ReleaseLine("o1", "B")]),
        (confirmed, [ReleaseLine("o1", "A"), ReleaseLine("o1", "B")]),
    ],
)
def test_cancel_releases_reserved_lines(saga_at: Factory, released: list[ReleaseLine]) -> None:
    saga, out = step(saga_at(), CancelOrder("o1", "ev-c", "changed my mind"))
    assert saga.status is S.CANCELLED
    assert saga.failure_reason == "changed my mind"
    assert statuses(out) == [S.CANCELLED]
    assert only(out, ReleaseLine) == released


def test_line_reserved_after_cancel_is_given_back() -> None:
    cancelled, _ = step(pending(), CancelOrder("o1", "ev-c"))
    saga, out = step(cancelled, LineReserved("o1", "A", 2))
    assert only(out, ReleaseLine) == [ReleaseLine("o1", "A")]
    assert saga.status is S.CANCELLED


@pytest.mark.parametrize("saga_at", [fulfilled, lambda: step(reserved(), PaymentTimedOut("o1"))[0]])
def test_cancel_after_the_end_does_nothing(saga_at: Factory) -> None:
    saga = saga_at()
    assert step(saga, CancelOrder("o1", "ev-c")) == (saga, [])


def test_fulfil_confirmed_order_commits_every_line() -> None:
    saga, out = step(confirmed(), FulfilOrder("o1", "ev-f"))
    assert saga.status is S.FULFILLED
    assert statuses(out) == [S.FULFILLED]
    assert only(out, CommitLine) == [CommitLine("o1", "A"), CommitLine("o1", "B")]
    assert set(line_states(saga).values()) == {LineState.COMMITTED}


@pytest.mark.parametrize("saga_at", [pending, reserved, fulfilled])
def test_fulfil_when_not_confirmed_does_nothing(saga_at: Factory) -> None:
    saga = saga_at()
    assert step(saga, FulfilOrder("o1", "ev-f")) == (saga, [])


def test_the_saga_refuses_foreign_messages() -> None:
    with pytest.raises(TypeError):
        handle(pending(), ReserveLine("o1", "A", 1), LATER)  # type: ignore[arg-type]


# --- idempotency and the audit trail -------------------------------------------------

HAPPY = [
    LineReserved("o1", "A", 2),
    LineReserved("o1", "B", 4),
    PaymentAuthorized("o1", "auth-1"),
    FulfilOrder("o1", "ev-f"),
]
PATHS = {
    "happy": HAPPY,
    "rejected": [
        LineReserved("o1", "A", 2),
        LineRejected("o1", "B", 4, 0, "gone"),
        LineReserved("o1", "A", 2),
    ],
    "late-reserve": [LineRejected("o1", "A", 2, 0, "gone"), LineReserved("o1", "B", 4)],
    "declined": [*HAPPY[:2], PaymentDeclined("o1", "no")],
    "timed-out": [*HAPPY[:2], PaymentTimedOut("o1")],
    "cancel-pending": [CancelOrder("o1", "ev-c"), LineReserved("o1", "A", 2)],
    "cancel-confirmed": [*HAPPY[:3], CancelOrder("o1", "ev-c"), FulfilOrder("o1", "ev-f"),
                         PaymentVoided("o1", "auth-1", "voided")],
    "late-authorisation": [*HAPPY[:2], PaymentTimedOut("o1"), PaymentAuthorized("o1", "auth-1"),
                           PaymentVoided("o1", None, "nothing"), PaymentVoided("o1", "auth-1", "voided")],
}


@pytest.mark.parametrize("path", PATHS.values(), ids=PATHS.keys())
def test_every_message_delivered_twice_changes_nothing_the_second_time(
    path: list[SagaInput],
) -> None:
    saga = pending()
    for msg in path:
        saga, _ = step(saga, msg)
        again, out = step(saga, msg)
        assert out == [], f"redelivered {msg} produced {out}"
        assert again == saga


@pytest.mark.parametrize(
    ("saga_at", "msg"),
    [
        (lambda: step(reserved(), PaymentTimedOut("o1"))[0], LineReleased("o1", "A", 2)),
        (fulfilled, LineCommitted("o1", "A", 2)),
    ],
    ids=["LineReleased", "LineCommitted"],
)
def test_redelivered_stock_confirmation_changes_nothing(saga_at: Factory, msg: SagaInput) -> None:
    saga, first = step(saga_at(), msg)
    assert [type(m) for m in first] == [AuditEntry]
    again, out = step(saga, msg)
    assert out == []
    assert again == saga


@pytest.mark.parametrize("path", PATHS.values(), ids=PATHS.keys())
def test_audit_seq_and_status_version_grow_by_one(path: list[SagaInput]) -> None:
    saga, out = start(placed(), CATALOG, NOW)
    for msg in path:
        saga, more = step(saga, msg)
        out.extend(more)
    seqs = [m.seq for m in out if isinstance(m, AuditEntry)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert saga.seq == seqs[-1]
    versions = [m.version for m in out if isinstance(m, OrderStatusChanged)]
    assert versions == sorted(set(versions))
    assert all(v in seqs for v in versions)


def test_happy_path_status_sequence() -> None:
    saga, out = start(placed(), CATALOG, NOW)
    for msg in HAPPY:
        saga, more = step(saga, msg)
        out.extend(more)
    assert statuses(out) == [S.PENDING, S.RESERVED, S.CONFIRMED, S.FULFILLED]
    changes = [m for m in out if isinstance(m, OrderStatusChanged)]
    assert [c.previous for c in changes] == [None, S.PENDING, S.RESERVED, S.CONFIRMED]
    assert all(c.created_at == "2024-05-01T11:59:59Z" for c in changes)
