"""Test harness: the real Kafka broker, PostgreSQL server and Orion workers as processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from orion_devstack import MailCatcher
from orion_devstack._common import DevServiceError
from orion_devstack.ports import free_port
from orion_devstack.stack import Mailer, Services, Worker, wait_until
from orion_devstack.stack import running_services as _running_services
from orion_streams.adapters import schema
from orion_streams.adapters.postgres import SqlAlchemyStore
from orion_streams.domain.catalog import Product

PARTITIONS = 4
PAYMENT_TIMEOUT = 5.0
TEST_PRODUCTS = [Product(f"T-{i:03d}", f"Test product {i}", 1_000 + i) for i in range(1, 81)]
__all__ = ["Mailer", "Services", "Worker", "wait_until"]


def running_services(root: Path, *, secure_kafka: bool = False, secure_postgres: bool = False) -> Any:
    """The test stack: 4 partitions, a 5 s payment timeout and the test catalog (with
    `secure_kafka`, a broker that accepts only SASL_SSL; with `secure_postgres`, a database
    that accepts only TLS)."""
    return _running_services(
        root, partitions=PARTITIONS, payment_timeout=PAYMENT_TIMEOUT, products=TEST_PRODUCTS,
        secure_kafka=secure_kafka, secure_postgres=secure_postgres)


async def eventually(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Await an async check until it returns something truthy, within a deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)  # poll interval under a deadline
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last saw {last!r}")


class Api:
    """A small HTTP client for the v1 API."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session

    async def call(
        self, method: str, path: str, token: str | None = None, body: Any = None,
        headers: dict[str, str] | None = None, raw: bytes | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        data: bytes | None = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        async with self.session.request(method, self.base + path, data=data, headers=hdrs) as resp:
            text = await resp.text()
            try:
                payload = json.loads(text) if text else None
            except json.JSONDecodeError:
                payload = text
            return resp.status, payload, dict(resp.headers)

    async def place(self, token: str, lines: list[dict[str, Any]], payment: str = "tok_ok",
                    wait: float | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        path = "/v1/orders" + (f"?wait={wait}" if wait is not None else "")
        body = {"lines": lines, "payment": {"token": payment}, "email": "sarah@example.com"}
        return await self.call("POST", path, token, body, headers=headers)

    async def order(self, token: str, order_id: str) -> Any:
        status, body, _ = await self.call("GET", f"/v1/orders/{order_id}", token)
        assert status == 200, (status, body)
        return body

    async def restock(self, admin: str, sku: str, delta: int) -> Any:
        status, body, _ = await self.call(
            "POST", f"/v1/inventory/{sku}/adjustments", admin, {"delta": delta, "reason": "restock"}
        )
        assert status == 200, (status, body)
        return body["level"]

    async def restock_new(self, admin: str, sku: str, delta: int) -> None:
        """Restock a product just added to the catalog: the worker looks at the catalog again
        at most once a second, so it may answer 404 for that long."""

        async def restocked() -> bool:
            status, body, _ = await self.call(
                "POST", f"/v1/inventory/{sku}/adjustments", admin, {"delta": delta, "reason": "restock"})
            assert status in (200, 404), body
            return status == 200

        await eventually(restocked, 10, f"{sku} known to the worker and restocked")

    async def stock(self, token: str, sku: str) -> Any:
        status, body, _ = await self.call("GET", f"/v1/inventory/{sku}", token)
        assert status == 200, (status, body)
        return body

    async def decided(self, token: str, order_id: str, timeout: float = 30,
                      final: tuple[str, ...] = ("CONFIRMED", "FULFILLED", "REJECTED", "PAYMENT_FAILED", "CANCELLED")) -> Any:
        async def check() -> Any:
            # 404 is fine here: an order published straight to Kafka appears with the projection.
            status, order, _ = await self.call("GET", f"/v1/orders/{order_id}", token)
            assert status in (200, 404), (status, order)
            return order if status == 200 and order["status"] in final else None

        return await eventually(check, timeout, f"order {order_id} to reach {final}")


async def produce(bootstrap: str, topic: str, key: bytes | None, value: bytes,
                  headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, headers=headers, partition=partition)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, timeout: float = 5.0) -> list[Any]:
    """Every record currently in a topic (all partitions, from the start)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        # A consumer without a subscription only knows topics it asks about.
        partitions = await consumer._client._wait_on_metadata(topic)
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in tps])

        while await behind():
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end")
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                records.extend(msgs)
        return records
    finally:
        await consumer.stop()


async def read_messages(bootstrap: str, topic: str) -> list[Any]:
    """The JSON messages in a topic, each item of a batch record on its own, in order;
    values that are not JSON are left out."""
    out: list[Any] = []
    for rec in await read_topic(bootstrap, topic):
        try:
            body = json.loads(rec.value)
        except (TypeError, ValueError):
            continue
        if isinstance(body, dict) and body.get("type") == "Batch" and isinstance(body.get("items"), list):
            out += [item.get("value") for item in body["items"] if isinstance(item, dict)]
        else:
            out.append(body)
    return out


async def table_values(services: Services, table: str) -> dict[str, Any]:
    """The latest value per key of a Faust table, read from its changelog topic."""
    out: dict[str, Any] = {}
    for rec in await read_topic(services.bootstrap, f"{services.app_id}-{table}-changelog"):
        key = json.loads(rec.key)
        out[key] = json.loads(rec.value) if rec.value is not None else None
    return out


def new_id() -> str:
    return uuid.uuid4().hex


async def group_lag(services: Services) -> dict[str, int]:
    """Unconsumed messages per source topic partition for Orion's consumer groups: the
    agents', and the projection's for the topics it reads (a partition nobody ever committed
    counts from offset 0)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from orion_streams import topics

    projected = {topics.ORDER_STATUS.name, topics.ORDER_AUDIT.name, topics.STOCK_LEVELS.name}
    admin = AIOKafkaAdminClient(bootstrap_servers=services.bootstrap)
    await admin.start()
    try:
        agents = await admin.list_consumer_group_offsets(services.app_id)
        projection = await admin.list_consumer_group_offsets(f"{services.app_id}-projection")
    finally:
        await admin.close()
    committed = {tp: meta for tp, meta in agents.items() if tp.topic not in projected}
    committed.update({tp: meta for tp, meta in projection.items() if tp.topic in projected})
    tps = [TopicPartition(spec.name, p) for spec in topics.PIPELINE if spec is not topics.DEAD_LETTERS
           for p in range(PARTITIONS)]
    consumer = AIOKafkaConsumer(bootstrap_servers=services.bootstrap)
    await consumer.start()
    try:
        end = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    lag = {}
    for tp in tps:
        done = committed[tp].offset if tp in committed else 0
        if end[tp] > done:
            lag[f"{tp.topic}[{tp.partition}]"] = end[tp] - done
    return lag


async def add_product(services: Services, sku: str, unit_price: int = 900) -> None:
    """What a catalog import does (outside Orion's API): a new product row."""
    store = SqlAlchemyStore(services.database_url, pool_size=1)
    try:
        async with store.engine.begin() as conn:
            await conn.execute(sa.text(
                "insert into products (sku, name, unit_price, currency) values (:sku, 'Added product', :price, 'EUR')"
            ), {"sku": sku, "price": unit_price})
    finally:
        await store.close()


async def count_rows(store: SqlAlchemyStore, table: str, **where: Any) -> int:
    """How many rows of `table` match the column values given."""
    t = schema.metadata.tables[table]
    query = sa.select(sa.func.count()).select_from(t)
    if where:
        query = query.where(sa.and_(*(t.c[k] == v for k, v in where.items())))
    async with store.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def stock_totals(store: SqlAlchemyStore) -> dict[str, tuple[int, int]]:
    """(on hand, reserved) of every SKU in the stock projection."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(schema.stock_levels))).all()
    return {r.sku: (r.on_hand, r.reserved) for r in rows}


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started in a session of its own, and whatever it started in its group:
    SIGTERM, then SIGKILL after 30 s (also when it has exited and left children behind)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def started_catcher(root: Path, **options: Any) -> MailCatcher:
    """A MailCatcher (`options` as MailCatcher takes them) started on a free port; tried
    again on another when a process takes the port first."""
    error: DevServiceError | None = None
    for _ in range(5):  # free_port can lose a race with another process
        port = free_port()
        catcher = MailCatcher(root / f"smtp-{port}", port=port, **options)
        try:
            catcher.start()
        except DevServiceError as exc:
            error = exc
            continue
        return catcher
    raise AssertionError(f"could not start a mail catcher: {error}")


@contextlib.contextmanager
def catchers(root: Path) -> Iterator[Callable[..., MailCatcher]]:
    """`start(**options)` starts MailCatchers (see started_catcher); all stop on exit."""
    started: list[MailCatcher] = []

    def start(**options: Any) -> MailCatcher:
        started.append(started_catcher(root, **options))
        return started[-1]

    try:
        yield start
    finally:
        for catcher in started:
            catcher.stop()
