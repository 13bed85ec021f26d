"""Session services for integration tests: a real Kafka broker, PostgreSQL and one worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from .harness import TEST_PRODUCTS, Api, Services, Worker, running_services


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with running_services(tmp_path_factory.mktemp("orion")) as svc:
        yield svc


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
