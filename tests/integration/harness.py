"""Test harness: the real Kafka broker, PostgreSQL server and Orion workers as processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from orion_streams.adapters.kafka_admin import ensure_topics
from orion_streams.adapters.postgres import SqlAlchemyStore
from orion_streams.cli import _migrate
from orion_streams.config import Settings
from orion_streams.devservices import KafkaBroker, LocalPostgres, free_port
from orion_streams.domain.catalog import DEMO_PRODUCTS, Product
from orion_streams.web.auth import issue_token

PARTITIONS = 4
PAYMENT_TIMEOUT = 2.0
TEST_PRODUCTS = [Product(f"T-{i:03d}", f"Test product {i}", 1_000 + i) for i in range(1, 81)]


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll a condition until it holds; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)  # poll until the deadline
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


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


@dataclass
class Services:
    bootstrap: str
    database_url: str
    state_dir: Path
    app_id: str
    settings: Settings = field(init=False)

    def __post_init__(self) -> None:
        self.settings = Settings(
            kafka_bootstrap=self.bootstrap, database_url=self.database_url, partitions=PARTITIONS,
            app_id=self.app_id,
        )

    def token(self, subject: str, roles: tuple[str, ...] = ("customer",), ttl: float = 3600) -> str:
        return issue_token(self.settings, subject, roles, ttl=ttl)


@contextmanager
def running_services(root: Path) -> Iterator[Services]:
    """A fresh Kafka broker and PostgreSQL server on free ports, migrated, topics created,
    catalog loaded; both stopped on exit whatever happens."""
    broker = KafkaBroker(root / "kafka", port=free_port())
    pg = LocalPostgres(root / "postgres", port=free_port())
    broker.start()
    try:
        pg.start()
        try:
            _migrate(pg.url)
            asyncio.run(ensure_topics(broker.bootstrap, PARTITIONS))

            async def seed() -> None:
                store = SqlAlchemyStore(pg.url, pool_size=1)
                try:
                    await store.upsert_products([*DEMO_PRODUCTS, *TEST_PRODUCTS])
                finally:
                    await store.close()

            asyncio.run(seed())
            yield Services(broker.bootstrap, pg.url, root, f"orion-test-{uuid.uuid4().hex[:8]}")
        finally:
            pg.stop()
    finally:
        broker.stop()


class Worker:
    """One `orion worker` process with its own web port and state dir."""

    def __init__(self, services: Services, name: str, extra_env: dict[str, str] | None = None) -> None:
        self.services = services
        self.name = name
        self.port = free_port()
        self.dir = services.state_dir / f"worker-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "worker.log"
        self.env = {
            **os.environ,
            "ORION_KAFKA_BOOTSTRAP": services.bootstrap,
            "ORION_DATABASE_URL": services.database_url,
            "ORION_WEB_PORT": str(self.port),
            "ORION_STATE_DIR": str(self.dir),
            "ORION_APP_ID": services.app_id,
            "ORION_PARTITIONS": str(PARTITIONS),
            "ORION_PAYMENT_TIMEOUT": str(PAYMENT_TIMEOUT),
            "ORION_WORKER_ID": name,
            "ORION_LOG_LEVEL": "info",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> Worker:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orion_streams.cli", "worker"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        try:
            wait_until(self.ready, timeout, f"worker {self.name} /ready")
        except AssertionError:
            self.stop()
            raise AssertionError(f"worker {self.name} did not get ready:\n{self.tail()}") from None
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker {self.name} exited:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


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
    """Unconsumed messages per source topic partition for Orion's consumer group
    (a partition nobody ever committed counts from offset 0)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from orion_streams import topics

    admin = AIOKafkaAdminClient(bootstrap_servers=services.bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(services.app_id)
    finally:
        await admin.close()
    tps = [TopicPartition(spec.name, p) for spec in topics.ALL if spec is not topics.DEAD_LETTERS
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
