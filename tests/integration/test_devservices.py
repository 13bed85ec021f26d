"""Integration tests: each dev service starts on free ports, answers, and stops cleanly."""

from __future__ import annotations

import asyncio
import os
import smtplib
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from orion_devstack import (
    DevServiceError,
    KafkaBroker,
    LocalPostgres,
    MailCatcher,
    free_port,
)
from orion_devstack._common import pid_alive, wait_until
from orion_devstack.ports import port_open

pytestmark = pytest.mark.integration


def _assert_gone(pid: int | None, port: int) -> None:
    assert pid is not None
    assert not pid_alive(pid), f"process {pid} still running after stop()"
    assert not port_open(port), f"port {port} still open after stop()"


# --------------------------------------------------------------------------- Kafka


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path / "kafka", port=free_port())
    try:
        broker.start(timeout=120)
        yield broker
    finally:
        broker.stop()


async def _kafka_roundtrip(bootstrap: str, topic: str) -> bytes:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        # KRaft publishes new topics to the brokers' metadata a moment after creating them.
        deadline = time.monotonic() + 10
        while topic not in await admin.list_topics():
            assert time.monotonic() < deadline, f"{topic} never listed"
            await asyncio.sleep(0.1)  # poll until the deadline
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello orion", key=b"order-1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"g-{topic}", auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()
    value: bytes = record.value
    return value


async def _kafka_topics(bootstrap: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics: list[str] = await admin.list_topics()
        return topics
    finally:
        await admin.close()


def test_kafka_roundtrip(kafka: KafkaBroker) -> None:
    assert kafka.bootstrap == f"127.0.0.1:{kafka.port}"
    assert kafka.pid_path.read_text().strip() == str(kafka.pid)
    value = asyncio.run(_kafka_roundtrip(kafka.bootstrap, f"smoke-{uuid.uuid4().hex[:8]}"))
    assert value == b"hello orion"


def test_kafka_restart_keeps_data_and_reuse_adopts(tmp_path: Path) -> None:
    state, port = tmp_path / "kafka", free_port()
    first = KafkaBroker(state, port=port)
    second = KafkaBroker(state, port=port, reuse=True)
    try:
        first.start(timeout=120)
        asyncio.run(_kafka_roundtrip(first.bootstrap, "kept"))
        pid = first.pid
        first.stop()
        _assert_gone(pid, port)

        # Same state dir again: no reformat, the topic survives.
        first.start(timeout=120)
        assert "kept" in asyncio.run(_kafka_topics(first.bootstrap))

        # Without reuse a live broker for the same dir is an error, with reuse it's adopted.
        with pytest.raises(DevServiceError, match="already running"):
            KafkaBroker(state, port=port).start()
        second.start(timeout=30)
        assert second.pid == first.pid
        second.stop()
        _assert_gone(first.pid, port)
    finally:
        second.stop()
        first.stop()


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[LocalPostgres]:
    server = LocalPostgres(tmp_path / "pg", port=free_port(), user="app", password="s3cr:t@")
    try:
        server.start(timeout=60)
        yield server
    finally:
        server.stop()


async def _pg_query(dsn: str) -> tuple[str, str, str, bool]:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        row = await conn.fetchrow(
            "select version(), current_user, current_database(),"
            " (select rolsuper from pg_roles where rolname = current_user)"
        )
        assert row is not None
        await conn.execute("create table t (id int primary key)")
        return row[0], row[1], row[2], row[3]
    finally:
        await conn.close()


def test_postgres_query(postgres: LocalPostgres) -> None:
    assert postgres.url.startswith("postgresql+asyncpg://app:s3cr%3At%40@127.0.0.1:")
    version, user, database, is_super = asyncio.run(_pg_query(postgres.dsn))
    assert version.startswith("PostgreSQL 18")
    assert (user, database, is_super) == ("app", "orion", False)
    if os.geteuid() == 0:
        # postgres refuses root, so the launcher must have dropped privileges.
        assert postgres.pid is not None
        assert Path(f"/proc/{postgres.pid}").stat().st_uid != 0


def test_postgres_restart_and_reuse(tmp_path: Path) -> None:
    state, port = tmp_path / "pg", free_port()
    first = LocalPostgres(state, port=port)
    second = LocalPostgres(state, port=port, reuse=True)
    try:
        first.start()
        pid = first.pid
        first.stop()
        _assert_gone(pid, port)
        first.start()
        second.start()
        assert second.pid == first.pid
        asyncio.run(_pg_query(second.dsn))
    finally:
        second.stop()
        first.stop()
    _assert_gone(first.pid or pid, port)


# --------------------------------------------------------------------------- SMTP


@pytest.fixture
def mailcatcher(tmp_path: Path) -> Iterator[MailCatcher]:
    catcher = MailCatcher(tmp_path / "smtp", port=free_port())
    try:
        catcher.start()
        yield catcher
    finally:
        catcher.stop()


def test_mailcatcher_receives(mailcatcher: MailCatcher) -> None:
    msg = EmailMessage()
    msg["From"] = "shop@orion.test"
    msg["To"] = "alice@example.test"
    msg["Subject"] = "Order 42 confirmed"
    msg.set_content("Thanks for your order.")
    with smtplib.SMTP(mailcatcher.host, mailcatcher.port, timeout=10) as client:
        client.send_message(msg, to_addrs=["alice@example.test", "audit@orion.test"])

    (got,) = mailcatcher.wait_for(1, timeout=10)
    assert got["Subject"] == "Order 42 confirmed"
    assert got["X-Envelope-To"] == "alice@example.test, audit@orion.test"
    assert wait_until(lambda: len(list(mailcatcher.mail_dir.glob("*.eml"))) == 1, timeout=5)
    (eml,) = mailcatcher.mail_dir.glob("*.eml")
    assert b"Thanks for your order." in eml.read_bytes()
