"""The projection (agents/projection.py) and the emails it queues (agents/notify.py), with a
fake store: what each record adds to the batch, what is parked and why, what the batch writes
in one transaction, and the lag the worker reports. No broker, no database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import TopicPartition

from orion_streams import topics as t
from orion_streams.adapters.postgres import AuditContext
from orion_streams.agents import projection as projection_module
from orion_streams.agents.notify import Emails
from orion_streams.agents.projection import Consumer, Projection, ProjectionRunner, Projector
from orion_streams.config import Settings
from orion_streams.domain import commands as c
from orion_streams.domain import events as e
from orion_streams.domain import notifications as n
from orion_streams.domain.catalog import Catalog
from orion_streams.domain.orders import OrderStatus

from .fakes import CATALOG, Event, FakeBus, event

STATUS, AUDIT, LEVELS = t.ORDER_STATUS.name, t.ORDER_AUDIT.name, t.STOCK_LEVELS.name
CONTEXT = AuditContext("corr-1", "user:alice", "customer")
AT = "2026-12-04T10:00:00.000Z"


def status_change(status: OrderStatus = OrderStatus.CONFIRMED, *, email: str = "alice@example.com",
                  audit: tuple[e.AuditEntry, ...] = ()) -> e.OrderStatusChanged:
    return e.OrderStatusChanged(
        "o-1", "u-1", email, status, OrderStatus.RESERVED, (e.OrderLineView("A", 2, 1_000),), 2_000, "EUR",
        None, 4, AT, AT, audit,
    )


class FakeStore:
    """The read model's transaction: what it was given, and whether it failed first."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.projected: list[tuple[Any, ...]] = []
        self.engine = self

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[str]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the database is away")
        yield "conn"

    async def project_in(self, conn: Any, statuses: Any, audit: Any, levels: Any, adjustments: Any) -> None:
        self.projected.append((conn, list(statuses), list(audit), list(levels), list(adjustments)))


class FakeNotifications:
    def __init__(self) -> None:
        self.enqueued: list[list[n.Notification]] = []

    async def enqueue_in(self, conn: Any, notifications: list[n.Notification]) -> list[str]:
        self.enqueued.append(list(notifications))
        return [note.id for note in notifications]


class Runtime:
    def __init__(self, failures: int = 0) -> None:
        self.store = FakeStore(failures)
        self.notifications = FakeNotifications()


def projector(settings: Settings | None = None, catalog: Catalog = CATALOG) -> tuple[Projector, Projection, FakeBus, Runtime]:
    bus, runtime = FakeBus(), Runtime()
    batch = Projection(cast(Any, runtime), Emails(settings or Settings(), lambda: catalog))
    return Projector(batch, bus.send_dead_letter), batch, bus, runtime


# -- what each record adds to the batch ----------------------------------------------------------


async def test_a_status_change_lands_in_the_batch_with_its_audit_and_identity() -> None:
    proj, batch, bus, _ = projector()
    entry = e.AuditEntry("o-1", 4, "OrderStatusChanged", AT, {"from": "RESERVED", "to": "CONFIRMED"})
    change = status_change(audit=(entry,))
    await proj.handle_event(event(STATUS, "o-1", change))
    assert batch.statuses == [change] and batch.correlation_ids == ["corr-1"]
    assert batch.audit == [(entry, CONTEXT)]
    assert batch.levels == [] and bus.kinds() == []


async def test_an_audit_entry_lands_in_the_batch_with_who_caused_it() -> None:
    proj, batch, _, _ = projector()
    entry = e.AuditEntry("o-1", 2, "LineReserved", AT, {"sku": "A", "quantity": 2})
    await proj.handle_event(event(AUDIT, "o-1", entry))
    assert batch.audit == [(entry, CONTEXT)] and batch.statuses == []


async def test_stock_levels_and_adjustments_land_in_the_batch() -> None:
    proj, batch, _, _ = projector()
    level = e.StockLevelChanged("A", 10, 3, 2, 7, AT)
    adjusted = e.StockAdjusted("A", "adj-1", 5, "restock", 15, 3)
    refused = e.AdjustmentRejected("A", "adj-2", "unknown reason 'x'")
    for message in (level, adjusted, refused):
        await proj.handle_event(event(LEVELS, "A", message))
    assert batch.levels == [level] and batch.adjustments == [adjusted, refused]


@pytest.mark.parametrize("message", [c.ReserveLine("o-1", "A", 1), e.LineReserved("o-1", "A", 1)])
async def test_a_message_that_is_not_projected_is_dead_lettered_wrong_topic(message: Any) -> None:
    proj, batch, bus, _ = projector()
    await proj.handle_event(event(STATUS, "o-1", message, offset=9))
    [letter] = bus.dead_letters
    assert letter.kind == "wrong_topic" and (letter.body["source_topic"], letter.body["offset"]) == (STATUS, 9)
    assert (batch.statuses, batch.audit, batch.levels, batch.adjustments) == ([], [], [], [])
    assert batch.emails.items == []


async def test_an_undecodable_record_is_dead_lettered_bad_record() -> None:
    proj, batch, bus, _ = projector()
    await proj.handle_event(event(STATUS, "o-1", b'{"type": "OrderStatusChanged"}'))
    assert bus.kinds() == ["bad_record"] and batch.statuses == []


async def test_a_record_the_projection_fails_on_is_dead_lettered_and_the_batch_goes_on() -> None:
    def broken_catalog() -> Catalog:
        raise RuntimeError("a bug")

    bus = FakeBus()
    batch = Projection(cast(Any, Runtime()), Emails(Settings(), broken_catalog))
    proj = Projector(batch, bus.send_dead_letter)
    records_ = [event(STATUS, "o-1", status_change(), offset=1), event(LEVELS, "A", e.StockLevelChanged("A", 1, 0, 0, 1, AT), offset=2)]
    for record in records_:
        await proj.handle(_consumed(record))
    assert bus.kinds() == ["internal_error"]  # the status change's email needs the catalog
    assert [level.sku for level in batch.levels] == ["A"]


def _consumed(record: Event) -> Any:
    """An aiokafka ConsumerRecord's attributes."""
    where = record.message
    return type("Record", (), {"topic": where.topic, "partition": where.partition, "offset": where.offset,
                               "timestamp": where.timestamp, "key": record.key, "value": record.value,
                               "headers": record.headers})()


# -- emails ------------------------------------------------------------------------------


async def test_a_status_change_asks_for_the_customers_email_once_per_status() -> None:
    proj, batch, _, _ = projector()
    await proj.handle_event(event(STATUS, "o-1", status_change(OrderStatus.CONFIRMED)))
    [note] = batch.emails.items
    assert (note.key, note.template, note.recipients) == (
        n.order_key("o-1", OrderStatus.CONFIRMED), "order_processing", ("alice@example.com",))
    assert note.correlation_id == "corr-1" and note.order_id == "o-1"
    assert note.context["order"]["lines"][0]["name"] == "Alpha lamp"  # from the catalog


@pytest.mark.parametrize("change", [status_change(OrderStatus.RESERVED), status_change(email="")],
                         ids=["internal-status", "no-address"])
async def test_some_status_changes_ask_for_no_email(change: e.OrderStatusChanged) -> None:
    proj, batch, _, _ = projector()
    await proj.handle_event(event(STATUS, "o-1", change))
    assert batch.statuses == [change] and batch.emails.items == []


async def test_low_stock_alerts_the_admins_and_is_not_projected() -> None:
    proj, batch, _, _ = projector(Settings().with_changes(alert_emails=("ops@example.com", "boss@example.com")))
    alert = e.LowStockDetected("A", 2, 2, AT, version=7)
    await proj.handle_event(event(LEVELS, "A", alert))
    [note] = batch.emails.items
    assert (note.key, note.template, note.recipients, note.sku) == (
        n.low_stock_key("A", 7), "low_stock", ("ops@example.com", "boss@example.com"), "A")
    assert note.context["stock"]["name"] == "Alpha lamp"
    assert batch.levels == [] and batch.statuses == []


async def test_low_stock_alerts_no_one_when_no_admin_is_configured() -> None:
    proj, batch, _, _ = projector(Settings().with_changes(alert_emails=()))
    await proj.handle_event(event(LEVELS, "A", e.LowStockDetected("A", 2, 2, AT)))
    assert batch.emails.items == []


def test_emails_are_taken_once() -> None:
    emails = Emails(Settings(), lambda: CATALOG)
    emails.collect(cast(Any, event(STATUS, "o-1", b"")), status_change())
    assert len(emails.take()) == 1 and emails.take() == []


# -- writing the batch ------------------------------------------------------------------------


async def test_a_batch_is_written_in_one_transaction_with_its_emails_then_starts_empty() -> None:
    proj, batch, _, runtime = projector()
    change = status_change(audit=(e.AuditEntry("o-1", 4, "OrderStatusChanged", AT),))
    level = e.StockLevelChanged("A", 10, 3, 2, 7, AT)
    await proj.handle_event(event(STATUS, "o-1", change))
    await proj.handle_event(event(LEVELS, "A", level))
    await batch.written()
    [(conn, statuses, audit, levels, adjustments)] = runtime.store.projected
    assert (conn, statuses, levels, adjustments) == ("conn", [change], [level], [])
    assert [entry.seq for entry, _ in audit] == [4]
    [[note]] = runtime.notifications.enqueued
    assert note.key == n.order_key("o-1", OrderStatus.CONFIRMED)
    assert (batch.statuses, batch.audit, batch.levels, batch.emails.items) == ([], [], [], [])


async def test_an_empty_batch_writes_nothing() -> None:
    _, batch, _, runtime = projector()
    await batch.written()
    assert runtime.store.projected == [] and runtime.notifications.enqueued == []


async def test_a_write_the_database_refuses_is_tried_again_until_it_lands() -> None:
    _, batch, _, _ = projector()
    runtime = Runtime(failures=1)
    batch.runtime = cast(Any, runtime)
    level = e.StockLevelChanged("A", 10, 3, 2, 7, AT)
    batch.levels.append(level)
    await batch.written()
    assert runtime.store.failures == 0 and [p[3] for p in runtime.store.projected] == [[level]]


# -- lag ----------------------------------------------------------------------------------


class FakeKafkaConsumer:
    def __init__(self, ends: dict[TopicPartition, int | None]) -> None:
        self.ends = ends

    def assignment(self) -> set[TopicPartition]:
        return set(self.ends)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.ends[tp]


def test_the_lag_is_what_the_projection_has_not_written_per_partition_it_owns() -> None:
    settings = Settings()
    consumer = Consumer(settings, cast(Any, None), cast(Any, None))
    assert consumer.lag() == {}  # not connected
    written, fresh, unknown = TopicPartition(STATUS, 0), TopicPartition(STATUS, 1), TopicPartition(LEVELS, 2)
    consumer.consumer = cast(Any, FakeKafkaConsumer({written: 10, fresh: 4, unknown: None}))
    consumer.committed = {written: 7}
    # Nothing committed: everything waits. No end offset known yet: not reported.
    assert consumer.lag() == {written: 3, fresh: 4}
    inline = ProjectionRunner(settings.with_changes(projection="inline"), consumer)
    assert inline.lag() == {written: 3, fresh: 4}


def test_a_projection_in_its_own_process_reports_its_lag_through_the_child() -> None:
    settings = Settings().with_changes(projection="process")
    consumer = Consumer(settings, cast(Any, None), cast(Any, None))
    consumer.consumer = cast(Any, FakeKafkaConsumer({TopicPartition(STATUS, 0): 10}))
    runner = ProjectionRunner(settings, consumer)
    assert runner.lag() == {}  # nothing reported yet; the worker's own consumer is not asked
    runner.child.reported = {TopicPartition(STATUS, 3): 5}
    assert runner.lag() == {TopicPartition(STATUS, 3): 5}



class IdleKafkaConsumer:
    """The projection group's consumer after a restart, on a partition whose every record the
    group wrote before (committed at the log end, 500) and that gets no new one."""

    def __init__(self) -> None:
        self.tp = TopicPartition(STATUS, 0)
        self.polled = asyncio.Event()
        self.listener: Any = None
        self._quiet = asyncio.Event()  # never set: no record comes
        state = SimpleNamespace(position=500, has_valid_position=True)
        self._subscription = SimpleNamespace(subscription=SimpleNamespace(
            assignment=SimpleNamespace(state_value=lambda tp: state)))

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    def highwater(self, tp: TopicPartition) -> int:
        return 500  # every fetch answer carries it, records or not

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return 500

    async def committed(self, tp: TopicPartition) -> int:
        return 500

    async def position(self, tp: TopicPartition) -> int:
        return 500

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 500 for tp in tps}

    def subscribe(self, topics: Any = (), pattern: Any = None, listener: Any = None) -> None:
        self.listener = listener

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, Any]:
        if self.listener is not None:  # the group assigns the partition on the first poll
            listener, self.listener = self.listener, None
            await listener.on_partitions_assigned({self.tp})
        self.polled.set()
        await self._quiet.wait()
        return {}

    async def commit(self, offsets: Any = None) -> None:
        pass


class ReadyRuntime:
    async def ready(self) -> ReadyRuntime:
        return self


# The projection's lag counts from the group's committed offset, learnt once per assignment:
# a partition written before a restart and quiet since is not lag.
async def test_an_idle_partition_the_projection_wrote_before_a_restart_reports_no_lag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    idle = IdleKafkaConsumer()
    monkeypatch.setattr(projection_module, "AIOKafkaConsumer", lambda *topics, **config: idle)
    consumer = Consumer(Settings(), cast(Any, ReadyRuntime()), cast(Any, None))
    loop = asyncio.ensure_future(consumer.run())
    try:
        async with asyncio.timeout(5):
            await idle.polled.wait()  # started and waiting for records
        assert consumer.lag() == {TopicPartition(STATUS, 0): 0}
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
