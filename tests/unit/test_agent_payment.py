"""The payment agent (agents/payment.py) with a fake gateway: each request is answered on
order-events, on the order's partition, and acknowledged in offset order. No broker, no
provider, no Faust app."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orion_streams import records
from orion_streams import topics as t
from orion_streams.agents.payment import PaymentAgent
from orion_streams.config import Settings
from orion_streams.domain import commands as c
from orion_streams.domain import events as e
from orion_streams.partitioner import partition_for
from orion_streams.services.ports import PaymentError, PaymentResult, VoidOutcome

from .fakes import HEADERS, PARTITIONS, Event, FakeBus, Where, event, until

REQUESTS, EVENTS = t.PAYMENT_REQUESTS.name, t.ORDER_EVENTS.name


class FakeGateway:
    """Answers per order: a result, an exception to raise, or an event to wait for first."""

    def __init__(self) -> None:
        self.results: dict[str, PaymentResult] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.void_outcome: VoidOutcome | Exception = VoidOutcome.VOIDED
        self.calls: list[tuple[str, str]] = []

    async def authorize(self, *, amount: int, currency: str, token: str, idempotency_key: str) -> PaymentResult:
        self.calls.append(("authorize", idempotency_key))
        gate = self.gates.get(idempotency_key)
        if gate is not None:
            await gate.wait()
        return self.results.get(idempotency_key, PaymentResult(True, f"auth-{idempotency_key}"))

    async def void(self, *, authorization_id: str | None, payment_key: str) -> VoidOutcome:
        self.calls.append(("void", payment_key))
        if isinstance(self.void_outcome, Exception):
            raise self.void_outcome
        return self.void_outcome

    async def refund(self, *, authorization_id: str | None, payment_key: str, amount: int, currency: str) -> None:
        self.calls.append(("refund", payment_key))


def agent(gateway: FakeGateway, **changes: Any) -> tuple[PaymentAgent, FakeBus]:
    bus = FakeBus()
    settings = Settings().with_changes(partitions=PARTITIONS, **changes)
    return PaymentAgent(settings, lambda: gateway, bus), bus


def request(message: Any, **kwargs: Any) -> Event:
    return event(REQUESTS, message.order_id, message, **kwargs)


def answers(bus: FakeBus) -> list[Any]:
    return [m.message for m in bus.messages(EVENTS)]


AUTHORIZE = c.AuthorizePayment("o-1", 2_250, "EUR", "tok-1")
VOID = c.VoidPayment("o-1", "auth-1", 2_250, "EUR")


async def test_an_authorised_payment_is_answered_on_the_orders_partition_with_its_identity() -> None:
    gateway = FakeGateway()
    payments, bus = agent(gateway)
    await payments.handle_event(request(AUTHORIZE))
    [answer] = bus.messages(EVENTS)
    assert answer.message == e.PaymentAuthorized("o-1", "auth-o-1")
    assert (answer.key, answer.partition) == ("o-1", partition_for("o-1", PARTITIONS))
    assert answer.headers == dict(HEADERS)
    assert gateway.calls == [("authorize", "o-1")] and bus.kinds() == []


async def test_a_declined_payment_is_answered_with_why() -> None:
    gateway = FakeGateway()
    gateway.results["o-1"] = PaymentResult(False, reason="insufficient funds")
    payments, bus = agent(gateway)
    await payments.handle_event(request(AUTHORIZE))
    assert answers(bus) == [e.PaymentDeclined("o-1", "insufficient funds")]


async def test_a_provider_that_does_not_answer_within_the_budget_is_answered_timed_out() -> None:
    gateway = FakeGateway()
    gateway.gates["o-1"] = asyncio.Event()  # never set: the provider hangs
    payments, bus = agent(gateway, payment_timeout=0.01)
    async with asyncio.timeout(5):
        await payments.handle_event(request(AUTHORIZE))
    [answer] = answers(bus)
    assert isinstance(answer, e.PaymentTimedOut) and answer.order_id == "o-1"


@pytest.mark.parametrize(("outcome", "answer", "calls"), [
    (VoidOutcome.VOIDED, e.PaymentVoided("o-1", "auth-1", "voided"), ["void"]),
    (VoidOutcome.NOTHING, e.PaymentVoided("o-1", "auth-1", "nothing"), ["void"]),
    (VoidOutcome.CAPTURED, e.PaymentVoided("o-1", "auth-1", "refunded"), ["void", "refund"]),
])
async def test_a_void_is_answered_with_what_became_of_the_money(outcome: VoidOutcome, answer: Any, calls: list[str]) -> None:
    gateway = FakeGateway()
    gateway.void_outcome = outcome
    payments, bus = agent(gateway)
    await payments.handle_event(request(VOID))
    assert answers(bus) == [answer]
    assert [call for call, _ in gateway.calls] == calls and bus.kinds() == []


async def test_a_void_that_fails_is_dead_lettered_void_failed_and_answered() -> None:
    gateway = FakeGateway()
    gateway.void_outcome = PaymentError("provider away")
    payments, bus = agent(gateway, payment_void_timeout=0.05)
    async with asyncio.timeout(5):
        await payments.handle_event(request(VOID))
    [letter] = bus.dead_letters
    assert letter.kind == "void_failed" and "provider away" in letter.reason
    assert letter.body["source_topic"] == REQUESTS
    [answer] = answers(bus)
    assert isinstance(answer, e.PaymentVoidFailed) and answer.order_id == "o-1"


@pytest.mark.parametrize("message", [c.ReserveLine("o-1", "A", 1), e.PaymentAuthorized("o-1", "auth-1")])
async def test_a_message_that_is_not_a_payment_request_is_dead_lettered_wrong_topic(message: Any) -> None:
    gateway = FakeGateway()
    payments, bus = agent(gateway)
    await payments.handle_event(request(message))
    assert bus.kinds() == ["wrong_topic"] and answers(bus) == [] and gateway.calls == []


async def test_an_undecodable_request_is_dead_lettered_bad_record() -> None:
    gateway = FakeGateway()
    payments, bus = agent(gateway)
    await payments.handle_event(event(REQUESTS, "o-1", b"\xff"))
    assert bus.kinds() == ["bad_record"] and answers(bus) == [] and gateway.calls == []


async def test_answers_finished_together_go_out_together() -> None:
    gateway = FakeGateway()
    payments, bus = agent(gateway)
    orders = [f"o-{i}" for i in range(20)]
    await asyncio.gather(*(payments.handle_event(request(c.AuthorizePayment(o, 100, "EUR", "tok"))) for o in orders))
    assert sorted(m.key for m in bus.messages(EVENTS)) == sorted(orders)
    # One batch record per partition, not one record per answer.
    partitions = {partition_for(o, PARTITIONS) for o in orders}
    assert len([s for s in bus.fake.sent if s.topic == EVENTS]) == len(partitions)


# -- the loop: many requests at once, acknowledged in offset order ------------------------------


class Stream:
    """Records fed by the test; acknowledgements recorded; ends when the test says."""

    def __init__(self, records_: list[Event]) -> None:
        self.records = records_
        self.acked: list[int] = []
        self.done = asyncio.Event()

    def noack(self) -> Stream:
        return self

    async def events(self) -> Any:
        for record in self.records:
            yield record
        await self.done.wait()

    async def ack(self, record: Event) -> None:
        self.acked.append(record.message.offset)


def batch_record(offset: int, *messages: Any) -> Event:
    value = records.encode_batch([(m.order_id, records.encode(m), HEADERS) for m in messages])
    return Event(None, value, [(records.BATCH_HEADER, b"1")], Where(REQUESTS, 0, offset))


async def test_a_later_request_answered_first_is_acknowledged_only_after_the_earlier_one() -> None:
    gateway = FakeGateway()
    gateway.gates["o-1"] = asyncio.Event()  # the first request waits on the provider
    payments, bus = agent(gateway)
    stream = Stream([
        request(c.AuthorizePayment("o-1", 100, "EUR", "tok"), partition=0, offset=1),
        batch_record(2, c.AuthorizePayment("o-2", 100, "EUR", "tok"), c.AuthorizePayment("o-3", 100, "EUR", "tok")),
    ])
    loop = asyncio.ensure_future(payments.run(stream))  # type: ignore[arg-type]
    try:
        await until(lambda: {m.key for m in bus.messages(EVENTS)} == {"o-2", "o-3"}, "the later requests answered")
        assert stream.acked == []  # a commit must not pass the unanswered first request
        gateway.gates["o-1"].set()
        await until(lambda: stream.acked == [1, 2], "both records acknowledged")
        assert {m.key for m in bus.messages(EVENTS)} == {"o-1", "o-2", "o-3"}
    finally:
        stream.done.set()
        async with asyncio.timeout(5):
            await loop


async def test_an_unreadable_batch_record_is_dead_lettered_and_acknowledged() -> None:
    gateway = FakeGateway()
    payments, bus = agent(gateway)
    bad = Event(None, b"{", [(records.BATCH_HEADER, b"1")], Where(REQUESTS, 0, 1))
    stream = Stream([bad, request(AUTHORIZE, partition=0, offset=2)])
    loop = asyncio.ensure_future(payments.run(stream))  # type: ignore[arg-type]
    try:
        await until(lambda: stream.acked == [1, 2], "both records acknowledged")
        assert bus.kinds() == ["bad_record"] and [m.key for m in bus.messages(EVENTS)] == ["o-1"]
    finally:
        stream.done.set()
        async with asyncio.timeout(5):
            await loop


async def test_a_request_the_agent_fails_on_is_dead_lettered_and_the_partition_goes_on() -> None:
    gateway = FakeGateway()
    payments, bus = agent(gateway)

    calls = [0]
    handle = payments.handle_event

    async def first_fails(request_: Any) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("a bug")
        await handle(request_)

    payments.handle_event = first_fails  # type: ignore[method-assign,assignment]
    stream = Stream([request(AUTHORIZE, partition=0, offset=1), request(c.AuthorizePayment("o-2", 1, "EUR", "t"), partition=0, offset=2)])
    loop = asyncio.ensure_future(payments.run(stream))  # type: ignore[arg-type]
    try:
        await until(lambda: stream.acked == [1, 2], "both records acknowledged")
        assert bus.kinds() == ["internal_error"] and [m.key for m in bus.messages(EVENTS)] == ["o-2"]
    finally:
        stream.done.set()
        async with asyncio.timeout(5):
            await loop
