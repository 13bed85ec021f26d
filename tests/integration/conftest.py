"""Session services for integration tests: a real Kafka broker, PostgreSQL and one worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from orion_devstack.ports import free_port
from orion_devstack.smtp import MailCatcher

from .harness import TEST_PRODUCTS, Api, Mailer, Services, Worker, running_services


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with running_services(tmp_path_factory.mktemp("orion")) as svc:
        yield svc


@dataclass
class MailServers:
    """The worker's primary and fallback SMTP servers (real aiosmtpd, kept for the session)."""

    primary: MailCatcher
    fallback: MailCatcher


@pytest.fixture(scope="session")
def mail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServers]:
    root = tmp_path_factory.mktemp("mail")
    primary = MailCatcher(root / "primary", port=free_port())
    fallback = MailCatcher(root / "fallback", port=free_port())
    primary.start()
    try:
        fallback.start()
        try:
            yield MailServers(primary, fallback)
        finally:
            fallback.stop()
    finally:
        primary.stop()


@pytest.fixture(scope="session")
def worker(services: Services, mail: MailServers) -> Iterator[Worker]:
    env = {
        "ORION_SMTP_URL": f"smtp://{mail.primary.host}:{mail.primary.port}",
        "ORION_SMTP_FALLBACK_URL": f"smtp://{mail.fallback.host}:{mail.fallback.port}",
        "ORION_SMTP_TIMEOUT": "3",
        "ORION_EMAIL_MAX_ATTEMPTS": "4",
        "ORION_EMAIL_RETRY_BASE": "0.3",
        "ORION_ALERT_EMAILS": "ops@orion.test",
        # Realistic limits: the abuse tests hit them with users of their own.
        "ORION_ORDER_RATE_PER_MINUTE": "120",
        "ORION_ORDER_BURST": "30",
        # Every per-order line: the observability tests follow one order through the logs,
        # however many orders the tests before used up a sampled budget with.
        "ORION_LOG_ORDER_LINES": "0",
    }
    w = Worker(services, "a", extra_env=env).start()
    try:
        mailer = Mailer(services, "a", extra_env=env).start()
        try:
            yield w
        finally:
            mailer.stop()
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
