"""Session services for integration tests: a real Kafka broker, PostgreSQL and one worker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from orion_streams.adapters.kafka_admin import ensure_topics
from orion_streams.adapters.postgres import SqlAlchemyStore
from orion_streams.cli import _migrate
from orion_streams.devservices import KafkaBroker, LocalPostgres, free_port
from orion_streams.domain.catalog import DEMO_PRODUCTS, Product

from .harness import PARTITIONS, Api, Services, Worker

TEST_PRODUCTS = [Product(f"T-{i:03d}", f"Test product {i}", 1_000 + i) for i in range(1, 81)]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    root: Path = tmp_path_factory.mktemp("orion")
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


@pytest.fixture(scope="session")
def worker(services: Services) -> Iterator[Worker]:
    w = Worker(services, "a").start()
    try:
        yield w
    finally:
        w.stop()


_pool = iter(p.sku for p in TEST_PRODUCTS)


@pytest.fixture
def fresh_sku() -> object:
    """Hand out SKUs no other test touches (their stock starts at zero)."""
    return lambda: next(_pool)


@pytest.fixture
async def api(worker: Worker) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield Api(worker.url, session)


@pytest.fixture
def admin(services: Services) -> str:
    return services.token("mike", ("admin",))


@pytest.fixture
def customer(services: Services) -> str:
    return services.token("sarah", ("customer",))
