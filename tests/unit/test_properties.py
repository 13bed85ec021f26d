"""A stateful property test of the domain: the SKU owners' stock functions, the order saga
and a model payment provider, joined by a model network that delivers every message late,
twice or out of order, and loses answers that the saga then asks for again (`outstanding`).

Hypothesis drives random orders, cancels, fulfilments, restocks, payment outcomes
(authorised, declined, timed out before or after the provider authorised, so the
authorisation arrives late) and deliveries. After every step, per SKU:

    on hand = initial + restocked - sold
    initial + restocked + released = available + units ever reserved
    available >= 0, reserved = the units of the holds still held

and once the network is drained: every order is decided, a failed or cancelled order holds
nothing, and every authorisation of an order that did not go through is voided exactly once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from orion_streams.domain import commands as c
from orion_streams.domain import events as e
from orion_streams.domain import saga as domain
from orion_streams.domain import stock
from orion_streams.domain.catalog import Catalog, Product
from orion_streams.domain.orders import OrderStatus, RequestedLine
from orion_streams.domain.saga import Clock, VoidState

SKUS = ("P-1", "P-2", "P-3")
CATALOG = Catalog(Product(sku, f"Product {sku}", 500) for sku in SKUS)
NOW = Clock("2026-12-02T00:00:00.000Z", 1_796_169_600.0)
AT = NOW.iso
# What the provider does with a payment request when it is delivered.
PAYMENT = st.sampled_from(
    ["authorise", "decline", "timeout", "timeout_after_authorising", "authorise_after_timeout"]
)
GONE_BACK = {VoidState.VOIDED, VoidState.REFUNDED}


class Pipeline(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.levels = {sku: stock.StockLevel(sku) for sku in SKUS}
        self.holds: dict[tuple[str, str], stock.Hold] = {}
        self.sagas: dict[str, domain.OrderSaga] = {}
        # In flight: (to whom, message); a delivery may keep a copy (redelivery).
        self.network: list[tuple[str, Any]] = []
        # The provider: each order's authorisation (the order id is the idempotency key).
        self.authorised: dict[str, str] = {}
        self.voids: Counter[str] = Counter()
        self.initial: Counter[str] = Counter()
        self.restocked: Counter[str] = Counter()
        self.reserved_ever: Counter[str] = Counter()
        self.released: Counter[str] = Counter()
        self.sold: Counter[str] = Counter()
        self.orders = 0
        self.script: dict[str, str] = {}
        self.adjustments = 0

    # --- the model's pieces -------------------------------------------------------------

    def _emit(self, outputs: list[Any]) -> None:
        for m in outputs:
            if isinstance(m, c.ReserveLine | c.ReleaseLine | c.CommitLine):
                self.network.append(("stock", m))
            elif isinstance(m, c.AuthorizePayment | c.VoidPayment):
                self.network.append(("payment", m))
            elif isinstance(m, e.LineReserved | e.LineRejected | e.LineReleased | e.LineCommitted):
                self.network.append(("saga", m))
            # status changes, audit entries and stock levels are projections: not modelled

    def _adjust(self, sku: str, delta: int, reason: str) -> None:
        self.adjustments += 1
        level, events = stock.adjust(
            self.levels[sku], c.AdjustStock(sku, f"adj-{self.adjustments}", delta, reason), AT
        )
        self.levels[sku] = level
        if any(isinstance(ev, e.StockAdjusted) for ev in events):
            (self.initial if reason == "seed" else self.restocked)[sku] += delta

    def _to_stock(self, m: c.ReserveLine | c.ReleaseLine | c.CommitLine) -> None:
        key = (m.order_id, m.sku)
        level, hold = self.levels[m.sku], self.holds.get(key)
        before = (level.on_hand, level.reserved)
        level, hold, events = stock.apply(level, hold, m, AT)
        on_hand, reserved = level.on_hand, level.reserved
        sold = before[0] - on_hand
        self.sold[m.sku] += sold
        if reserved > before[1]:
            self.reserved_ever[m.sku] += reserved - before[1]
        elif reserved < before[1]:
            self.released[m.sku] += before[1] - reserved - sold
        self.levels[m.sku] = level
        if hold is not None:
            self.holds[key] = hold
        self._emit(events)

    def _to_payment(self, m: c.AuthorizePayment | c.VoidPayment, outcome: str) -> None:
        if isinstance(m, c.VoidPayment):
            auth = m.authorization_id or self.authorised.get(m.order_id)
            if (
                auth is not None
                and auth == self.authorised.get(m.order_id)
                and not self.voids[auth]
            ):
                self.voids[auth] += 1
                self._to_saga(e.PaymentVoided(m.order_id, m.authorization_id, "voided"))
            elif auth is not None and self.voids[auth]:
                self._to_saga(e.PaymentVoided(m.order_id, m.authorization_id, "voided"))  # a repeat
            else:
                self._to_saga(e.PaymentVoided(m.order_id, m.authorization_id, "nothing"))
            return
        if m.order_id in self.authorised:  # the same idempotency key: the same answer
            self._to_saga(e.PaymentAuthorized(m.order_id, self.authorised[m.order_id]))
            return
        if m.token == "tok_declined" or outcome == "decline":
            self._to_saga(e.PaymentDeclined(m.order_id, "card declined"))
        elif outcome == "authorise":
            self.authorised[m.order_id] = f"auth-{m.order_id}"
            self._to_saga(e.PaymentAuthorized(m.order_id, self.authorised[m.order_id]))
        else:
            if outcome == "timeout_after_authorising":
                self.authorised[m.order_id] = f"auth-{m.order_id}"
                # a retry of the same request (or a repeat) later learns of it: a late authorisation
                self.network.append(("payment", m))
            elif outcome == "authorise_after_timeout":
                # still inside the provider: it authorises after we gave up (after a void, maybe)
                self.network.append(("late", m))
            self._to_saga(e.PaymentTimedOut(m.order_id))

    def _to_saga(self, m: Any) -> None:
        saga = self.sagas.get(m.order_id)
        if saga is None:
            return
        saga, outputs = domain.handle(saga, m, NOW)
        self.sagas[m.order_id] = saga
        self._emit(outputs)

    def _deliver(self, index: int, keep: bool) -> None:
        to, m = self.network[index] if keep else self.network.pop(index)
        if to == "stock":
            self._to_stock(m)
        elif to == "payment":
            # the provider's first answer for the order is scripted, the rest authorise
            first = isinstance(m, c.AuthorizePayment)
            self._to_payment(m, self.script.pop(m.order_id, "authorise") if first else "authorise")
        elif to == "late":
            self._to_payment(m, "authorise")
        else:
            self._to_saga(m)

    # --- rules ----------------------------------------------------------------------------

    @initialize(units=st.lists(st.integers(0, 30), min_size=len(SKUS), max_size=len(SKUS)))
    def seed(self, units: list[int]) -> None:
        for sku, n in zip(SKUS, units, strict=True):
            if n:
                self._adjust(sku, n, "seed")

    @rule(
        lines=st.lists(
            st.tuples(st.sampled_from(SKUS), st.integers(1, 3)),
            min_size=1,
            max_size=3,
            unique_by=lambda line: line[0],
        ),
        card=st.sampled_from(["tok_ok", "tok_ok", "tok_declined"]),
        provider=PAYMENT,
        pay_now=st.booleans(),
    )
    def place(self, lines: list[tuple[str, int]], card: str, provider: str, pay_now: bool) -> None:
        self.orders += 1
        order_id = f"o{self.orders}"
        self.script[order_id] = provider
        placed = e.OrderPlaced(
            f"ev-{order_id}",
            order_id,
            "sarah",
            "sarah@example.com",
            tuple(RequestedLine(sku, q) for sku, q in lines),
            card,
            AT,
        )
        saga, outputs = domain.start(placed, CATALOG, NOW, pay_now=pay_now)
        self.sagas[order_id] = saga
        self._emit(outputs)

    @rule(sku=st.sampled_from(SKUS), delta=st.integers(-3, 8))
    def restock(self, sku: str, delta: int) -> None:
        if delta:
            self._adjust(sku, delta, "restock" if delta > 0 else "damage")

    @precondition(lambda self: self.sagas)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.sagas)))
        self._to_saga(c.CancelOrder(order_id, f"cancel-{order_id}"))

    @precondition(lambda self: self.sagas)
    @rule(data=st.data())
    def fulfil(self, data: st.DataObject) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.sagas)))
        self._to_saga(c.FulfilOrder(order_id, f"fulfil-{order_id}"))

    def _deliver_one(self, to: str, pick: int, keep: bool) -> None:
        """One message for `to`, any of those in flight: out of order, and sometimes twice."""
        waiting = [i for i, (dest, _) in enumerate(self.network) if dest == to]
        if waiting:
            self._deliver(waiting[pick % len(waiting)], keep)

    @rule(pick=st.integers(0, 999), keep=st.booleans())
    def deliver_to_stock(self, pick: int, keep: bool) -> None:
        self._deliver_one("stock", pick, keep)

    @rule(pick=st.integers(0, 999), keep=st.booleans())
    def deliver_to_saga(self, pick: int, keep: bool) -> None:
        self._deliver_one("saga", pick, keep)

    @rule(pick=st.integers(0, 999), keep=st.booleans())
    def deliver_to_payment(self, pick: int, keep: bool) -> None:
        self._deliver_one("payment", pick, keep)

    @rule(pick=st.integers(0, 999))
    def provider_authorises_late(self, pick: int) -> None:
        self._deliver_one("late", pick, False)

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        """A message is lost (a dead worker's unflushed send); the saga asks again below."""
        self.network.pop(data.draw(st.integers(0, len(self.network) - 1)))

    @rule()
    def ask_again(self) -> None:
        """What the saga does on evidence that an answer was lost: send what it waits for."""
        for saga in self.sagas.values():
            self._emit(domain.outstanding(saga))

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def stock_is_conserved_and_never_negative(self) -> None:
        for sku, level in self.levels.items():
            assert level.available >= 0 and level.reserved >= 0, level
            assert level.on_hand == self.initial[sku] + self.restocked[sku] - self.sold[sku], (
                sku,
                level,
            )
            assert (
                self.initial[sku] + self.restocked[sku] + self.released[sku]
                == level.available + self.reserved_ever[sku]
            ), (
                sku,
                level,
                self.initial[sku],
                self.restocked[sku],
                self.sold[sku],
                self.released[sku],
            )
            held = sum(
                h.quantity
                for (_, s), h in self.holds.items()
                if s == sku and h.state is stock.HoldState.HELD
            )
            assert level.reserved == held, (sku, level, held)

    @invariant()
    def nothing_is_sold_that_was_not_paid_for(self) -> None:
        for (order_id, _), hold in self.holds.items():
            if hold.state is stock.HoldState.COMMITTED:
                assert (
                    order_id in self.authorised
                    and self.sagas[order_id].status is OrderStatus.FULFILLED
                )

    @rule()
    def heal(self) -> None:
        """Faults end: deliver everything (the provider now answers), ask again until
        quiet, and look at how every order ended. Also run after the last step."""
        for _ in range(200):
            while self.network:
                self._deliver(len(self.network) - 1, False)  # newest first: late after the void
            for saga in self.sagas.values():
                self._emit(domain.outstanding(saga))
            if not self.network:
                break
        assert not self.network, "the pipeline never went quiet"
        self.stock_is_conserved_and_never_negative()
        for order_id, saga in self.sagas.items():
            assert saga.status.is_terminal or saga.status is OrderStatus.CONFIRMED, (
                order_id,
                saga.status,
            )
            assert domain.retirable(saga) or saga.status is OrderStatus.CONFIRMED, saga
            mine = [h for (o, _), h in self.holds.items() if o == order_id]
            if saga.status.is_failure:
                assert all(h.state is not stock.HoldState.HELD for h in mine), (saga, mine)
                auth = self.authorised.get(order_id)
                if (
                    auth is not None
                ):  # charged for an order that did not go through: given back once
                    assert self.voids[auth] == 1 and saga.void in GONE_BACK, (saga, self.voids)
            elif saga.status is OrderStatus.CONFIRMED:
                assert sorted(h.sku for h in mine if h.state is stock.HoldState.HELD) == sorted(
                    line.sku for line in saga.lines
                )
                assert order_id in self.authorised and not self.voids[self.authorised[order_id]]
            else:  # FULFILLED
                assert all(h.state is stock.HoldState.COMMITTED for h in mine) and len(mine) == len(
                    saga.lines
                )

    def teardown(self) -> None:
        self.heal()


Pipeline.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_the_pipeline_never_oversells_and_every_order_ends_decided = Pipeline.TestCase
