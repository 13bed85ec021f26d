"""Orion against a broker that accepts only SASL_SSL (SCRAM-SHA-512, certificates made for
the test) and a PostgreSQL that accepts only TLS (verify-full): a worker, a mailer and the
CLI connect with the ORION_KAFKA_* and ORION_DATABASE_* settings and an order goes from
HTTP to CONFIRMED with its email sent over STARTTLS; a wrong CA, a wrong password, a
plaintext client and an expired client certificate each stop at start-up within seconds
with a message naming the setting, and write nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from orion_devstack.ports import free_port
from orion_devstack.smtp import MailCatcher

from .harness import Api, Mailer, Services, Worker, eventually, running_services


def _postgres_tls() -> bool:
    from orion_devstack._common import DevServiceError
    from orion_devstack.postgres import tls_pg_bin_dir

    try:
        tls_pg_bin_dir()
    except DevServiceError as exc:
        print(f"PostgreSQL over TLS left out: {exc}")
        return False
    return True


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with running_services(
        tmp_path_factory.mktemp("secure"), secure_kafka=True, secure_postgres=_postgres_tls(),
    ) as svc:
        yield svc


def _env(services: Services, changes: dict[str, str | None], **more: str) -> dict[str, str]:
    """The process environment of an Orion process of the secure stack, with `changes`
    (None: the variable is not set at all)."""
    env = {**os.environ, "ORION_KAFKA_BOOTSTRAP": services.bootstrap, "ORION_DATABASE_URL": services.database_url,
           "ORION_APP_ID": services.app_id, "ORION_PARTITIONS": str(services.partitions), **services.env, **more}
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


# A client that speaks plaintext: none of the secure stack's Kafka settings.
PLAINTEXT: dict[str, str | None] = {
    "ORION_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT", "ORION_KAFKA_SASL_MECHANISM": None,
    "ORION_KAFKA_SASL_USERNAME": None, "ORION_KAFKA_SASL_PASSWORD": None, "ORION_KAFKA_SSL_CAFILE": None,
}


def _cli(services: Services, command: str, *args: str, changes: dict[str, str | None] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`orion <command>` against the secure stack, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "orion_streams.cli", command, *args],
        env=_env(services, changes or {}, ORION_STATE_DIR=str(services.state_dir / "cli")),
        capture_output=True, text=True, timeout=timeout, check=False,
    )


async def _topics(services: Services) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=services.bootstrap, request_timeout_ms=10_000,
                                **services.broker.secure.client_options("orion"))  # type: ignore[union-attr]
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def test_the_broker_refuses_a_plaintext_client(secure: Services) -> None:
    """The stack is what it claims: no client gets in without SASL_SSL."""
    done = _cli(secure, "topics", changes=PLAINTEXT)
    assert done.returncode != 0
    assert "is ORION_KAFKA_SECURITY_PROTOCOL=PLAINTEXT what its listener expects" in done.stderr, done.stderr[-2000:]


def test_the_cli_creates_topics_and_keys_over_sasl_ssl(secure: Services) -> None:
    topics = _cli(secure, "topics")
    assert topics.returncode == 0, topics.stderr[-2000:]
    migrate = _cli(secure, "migrate")
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    key = _cli(secure, "apikey", "create", "shop", "--scopes", "orders:write")
    assert key.returncode == 0 and "orders:write" in key.stdout, key.stderr[-2000:]


async def test_an_order_is_confirmed_and_its_email_sent_through_a_sasl_ssl_broker(
    secure: Services, tmp_path: Path,
) -> None:
    certs = secure.broker.secure.certs  # type: ignore[union-attr]
    catcher = MailCatcher(tmp_path / "mail", port=free_port(), security="starttls",
                          cert_file=certs.server_cert, key_file=certs.server_key)
    catcher.start()
    env = {"ORION_SMTP_URL": catcher.url, "ORION_SMTP_CA_FILE": str(certs.ca), "ORION_LOG_ORDER_LINES": "0"}
    worker = mailer = None
    try:
        worker = Worker(secure, "s1", extra_env=env).start()
        mailer = Mailer(secure, "s1", extra_env=env).start()
        admin, customer = secure.token("mike", ("admin",)), secure.token("sarah")
        async with aiohttp.ClientSession() as session:
            api = Api(worker.url, session)
            await api.restock(admin, "T-001", 5)
            status, body, _ = await api.place(customer, [{"sku": "T-001", "quantity": 1}])
            assert status == 202, body
            order = await api.decided(customer, body["order_id"], timeout=60)
            assert order["status"] == "CONFIRMED", order
        await eventually(lambda: _received(catcher, body["order_id"]), 60, "the order's email")
    finally:
        for process in (mailer, worker):
            if process is not None:
                process.stop()
        catcher.stop()


async def _received(catcher: MailCatcher, order_id: str) -> bool:
    return any(order_id[:8] in str(m.get("Subject", "")) + m.as_string() for m in list(catcher.messages))


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("wrong CA", "ORION_KAFKA_SSL_CAFILE: the certificate of the broker at"),
        ("wrong password", "ORION_KAFKA_SASL_USERNAME / ORION_KAFKA_SASL_PASSWORD: the broker at"),
        ("plaintext client", "is ORION_KAFKA_SECURITY_PROTOCOL=PLAINTEXT what its listener expects"),
        ("expired client certificate", "ORION_KAFKA_SSL_CERTFILE: the broker at"),
    ],
)
def test_a_setting_that_cannot_work_stops_the_worker_within_seconds_naming_it(
    secure: Services, case: str, says: str,
) -> None:
    certs = secure.broker.secure.certs  # type: ignore[union-attr]
    changes: dict[str, str | None] = {
        "wrong CA": {"ORION_KAFKA_SSL_CAFILE": str(certs.other_ca)},
        "wrong password": {"ORION_KAFKA_SASL_PASSWORD": "not-the-password"},
        "plaintext client": PLAINTEXT,
        "expired client certificate": {"ORION_KAFKA_SSL_CERTFILE": str(certs.expired_client_cert),
                                       "ORION_KAFKA_SSL_KEYFILE": str(certs.expired_client_key)},
    }[case]
    before = asyncio.run(_topics(secure))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "orion_streams.cli", "worker"],
        env=_env(secure, changes, ORION_STATE_DIR=str(secure.state_dir / f"bad-{case.replace(' ', '-')}"),
                 ORION_APP_ID=f"{secure.app_id}-bad", ORION_WEB_PORT=str(free_port())),
        capture_output=True, text=True, timeout=90, check=False,
    )
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-2000:]
    assert says in output, output[-2000:]
    assert "Traceback" not in output and "not-the-password" not in output
    assert took < 30, f"took {took:.0f}s"
    assert asyncio.run(_topics(secure)) == before  # wrote nothing: not even its app's topics
