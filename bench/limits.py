"""The limits Orion's figures are reported against, measured on the same stack in the same run.

- pgbench, the lock-based design: the whole order transaction on one hot row
  (`pgbench_order_tx.sql`) and the bare conditional update (`pgbench_conditional_update.sql`),
  at 1 and 16 clients, against the stack's own PostgreSQL.
- Kafka's own `kafka-producer-perf-test` and `kafka-consumer-perf-test` (the
  `org.apache.kafka.tools` classes, fetched once with Maven next to the broker jars), against
  the stack's broker: what the broker can take and give on this box.
- A bare aiokafka consume-decode-produce loop: JSON records of an order's size read in
  batches, decoded, a reply encoded and sent with acks=all, offsets committed per batch. The
  Python floor for one hop of a pipeline; an order that takes k hops costs at least k of these.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from orion_devstack._common import default_cache_dir
from orion_devstack.kafka import KAFKA_VERSION, fetch_kafka
from orion_devstack.postgres import pg_bin_dir

HERE = Path(__file__).resolve().parent
_TOOLS_MARKER = ".complete"

LOCKBENCH_SCHEMA = """
DROP TABLE IF EXISTS lockbench_order_events, lockbench_order_lines, lockbench_orders, lockbench_stock;
CREATE TABLE lockbench_stock (
  sku text PRIMARY KEY, on_hand bigint NOT NULL, reserved bigint NOT NULL,
  version bigint NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now(),
  CHECK (reserved >= 0 AND on_hand - reserved >= 0));
CREATE TABLE lockbench_orders (
  order_id uuid PRIMARY KEY, user_id text NOT NULL, status text NOT NULL, total bigint NOT NULL,
  created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
CREATE INDEX ON lockbench_orders (user_id, created_at);
CREATE TABLE lockbench_order_lines (
  order_id uuid NOT NULL REFERENCES lockbench_orders, sku text NOT NULL, quantity int NOT NULL,
  unit_price bigint NOT NULL, PRIMARY KEY (order_id, sku));
CREATE TABLE lockbench_order_events (
  order_id uuid NOT NULL, seq int NOT NULL, type text NOT NULL, data jsonb NOT NULL,
  at timestamptz NOT NULL, PRIMARY KEY (order_id, seq));
INSERT INTO lockbench_stock (sku, on_hand, reserved) VALUES ('HOT', 1000000000000, 0);
"""


def _pg_env(database_url: str) -> tuple[list[str], dict[str, str]]:
    """Connection arguments and environment of a SQLAlchemy URL, for psql and pgbench."""
    parts = urlsplit(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    env = {**os.environ, "PGPASSWORD": parts.password or ""}
    args = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432), "-U", parts.username or ""]
    return [*args, (parts.path or "/").lstrip("/")], env


def pgbench(database_url: str, seconds: float, clients: tuple[int, ...] = (1, 16)) -> dict[str, Any]:
    """tps of the two lock-based scripts at each client count (prepared statements)."""
    bin_dir = pg_bin_dir()
    conn, env = _pg_env(database_url)
    subprocess.run(
        [str(bin_dir / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-c", LOCKBENCH_SCHEMA, *conn[:-1], "-d", conn[-1]],
        env=env, check=True, capture_output=True,
    )
    out: dict[str, Any] = {"seconds": seconds}
    for script in ("pgbench_order_tx.sql", "pgbench_conditional_update.sql"):
        for n in clients:
            cmd = [
                str(bin_dir / "pgbench"), "-n", "-M", "prepared", "-c", str(n), "-j", str(min(n, 2)),
                "-T", str(int(seconds)), "-f", str(HERE / script), *conn[:-1], conn[-1],
            ]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            tps = re.search(r"tps = ([0-9.]+)", res.stdout)
            lat = re.search(r"latency average = ([0-9.]+) ms", res.stdout)
            out[f"{script.removesuffix('.sql').removeprefix('pgbench_')}_c{n}"] = {
                "tps": round(float(tps.group(1)), 1) if tps else None,
                "latency_avg_ms": float(lat.group(1)) if lat else None,
                "error": None if tps else (res.stderr or res.stdout)[-500:],
            }
    return out


# ---------------------------------------------------------------- Kafka's perf tools


def fetch_kafka_tools(cache_dir: Path | None = None) -> Path:
    """kafka-tools (ProducerPerformance, ConsumerPerformance) and its dependencies, once."""
    home = (cache_dir or default_cache_dir()) / f"kafka-tools-{KAFKA_VERSION}"
    if (home / _TOOLS_MARKER).is_file():
        return home / "libs"
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven ('mvn') is needed to fetch Kafka's perf tools")
    home.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".kafka-tools-", dir=home.parent))
    try:
        subprocess.run(
            [mvn, "-q", "-B", "-f", str(HERE / "kafka_tools_pom.xml"), "dependency:copy-dependencies",
             f"-DoutputDirectory={staging / 'libs'}", "-DincludeScope=runtime"],
            cwd=staging, check=True, capture_output=True,
        )
        (staging / _TOOLS_MARKER).write_text("ok\n")
        shutil.rmtree(home, ignore_errors=True)
        staging.rename(home)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return home / "libs"


def _java(main: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    classpath = f"{fetch_kafka_tools()}/*:{fetch_kafka()}/*"
    return subprocess.run(
        ["java", "-Xmx512m", "-cp", classpath, main, *args], capture_output=True, text=True, check=False, timeout=600,
    )


async def _create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


def kafka_perf(bootstrap: str, records: int = 200_000, size: int = 300, partitions: int = 4) -> dict[str, Any]:
    """Kafka's producer and consumer perf tools: records/s with acks=all, and read back."""
    topic = f"perf-{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_topic(bootstrap, topic, partitions))
    produced = _java("org.apache.kafka.tools.ProducerPerformance", [
        "--topic", topic, "--num-records", str(records), "--record-size", str(size), "--throughput", "-1",
        "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all", "linger.ms=5",
    ])
    last = [line for line in produced.stdout.splitlines() if "records sent" in line]
    out: dict[str, Any] = {"records": records, "record_size": size}
    m = re.search(r"([0-9.]+) records/sec .*?([0-9.]+) ms avg latency, ([0-9.]+) ms max", last[-1]) if last else None
    out["producer"] = (
        {"records_per_s": float(m.group(1)), "latency_avg_ms": float(m.group(2))} if m
        else {"error": (produced.stderr or produced.stdout)[-800:]}
    )
    consumed = _java("org.apache.kafka.tools.ConsumerPerformance", [
        "--bootstrap-server", bootstrap, "--topic", topic, "--messages", str(records), "--timeout", "60000",
    ])
    rows = [line for line in consumed.stdout.splitlines() if line and line[0].isdigit()]
    if rows:
        fields = [f.strip() for f in rows[-1].split(",")]
        # start, end, MB, MB/s, records, records/s, rebalance ms, fetch ms, fetch MB/s, fetch records/s
        out["consumer"] = {"records_per_s": float(fields[5]), "fetch_records_per_s": float(fields[9])}
    else:
        out["consumer"] = {"error": (consumed.stderr or consumed.stdout)[-800:]}
    return out


# ---------------------------------------------------------------- the Python floor


def _sample_order(i: int) -> bytes:
    return json.dumps({
        "type": "OrderPlaced", "event_id": str(uuid.uuid4()), "order_id": str(uuid.uuid4()),
        "user_id": f"bench-user-{i % 500}", "email": f"bench-user-{i % 500}@example.com",
        "lines": [{"sku": "SKU-001", "quantity": 1}], "payment": {"token": "tok_ok"},
        "placed_at": "2026-12-03T00:00:00.000Z",
    }).encode()


async def _aiokafka_loop(bootstrap: str, records: int, partitions: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    source, sink = f"floor-in-{uuid.uuid4().hex[:6]}", f"floor-out-{uuid.uuid4().hex[:6]}"
    await _create_topic(bootstrap, source, partitions)
    await _create_topic(bootstrap, sink, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        batch = []
        for i in range(records):
            batch.append(await producer.send(source, _sample_order(i), key=str(i).encode()))
        await asyncio.gather(*batch)
        consumer = AIOKafkaConsumer(
            source, bootstrap_servers=bootstrap, group_id=f"floor-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest", enable_auto_commit=False,
        )
        await consumer.start()
        try:
            done = 0
            cpu0, t0 = _cpu(), time.monotonic()
            while done < records:
                got = await consumer.getmany(timeout_ms=1000, max_records=500)
                futures = []
                for msgs in got.values():
                    for msg in msgs:
                        order = json.loads(msg.value)
                        reply = {"type": "LineReserved", "order_id": order["order_id"], "sku": "SKU-001",
                                 "quantity": 1, "available": 1}
                        futures.append(await producer.send(sink, json.dumps(reply).encode(), key=msg.key))
                        done += 1
                await asyncio.gather(*futures)
                if got:
                    await consumer.commit()
            wall, cpu = time.monotonic() - t0, _cpu() - cpu0
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
    return {
        "records": records, "records_per_s": round(records / wall, 1),
        "cpu_us_per_record": round(cpu * 1e6 / records, 1),
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def aiokafka_floor(bootstrap: str, records: int = 50_000, partitions: int = 4) -> dict[str, Any]:
    """One consume-decode-produce hop in plain aiokafka, in this process."""
    return asyncio.run(_aiokafka_loop(bootstrap, records, partitions))
