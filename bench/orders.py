"""Order load benchmark: a whole local stack, N orders from C concurrent clients.

    .venv/bin/python -m bench.orders --orders 2000 --clients 50 --workers 1

Reports the latency of POST /v1/orders (the <500 ms target), accepted orders per second,
decided orders per second end to end (HTTP -> Kafka -> saga -> reservation -> payment ->
PostgreSQL), acceptance-to-confirmation time, and the workers' peak memory. Not a test: it
asserts nothing and is not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import text

from orion_streams.adapters.postgres import SqlAlchemyStore
from orion_streams.devservices.ports import free_port
from orion_streams.devservices.smtp import MailCatcher
from orion_streams.devservices.stack import Mailer, Services, Worker, running_services
from orion_streams.domain.catalog import DEMO_PRODUCTS


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class PeakMemory(threading.Thread):
    """Samples the workers' resident memory until stopped."""

    def __init__(self, workers: list[Worker]) -> None:
        super().__init__(daemon=True)
        self.workers = workers
        self.peak: dict[str, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            for w in self.workers:
                if w.proc is not None:
                    self.peak[w.name] = max(self.peak.get(w.name, 0.0), _rss_mb(w.proc.pid))


async def _place_all(services: Services, workers: list[Worker], orders: int, clients: int, stock: int) -> dict[str, Any]:
    admin = services.token("bench-admin", ("admin",))
    skus = [p.sku for p in DEMO_PRODUCTS]
    async with aiohttp.ClientSession() as session:
        for sku in skus:
            url = f"{workers[0].url}/v1/inventory/{sku}/adjustments"
            async with session.post(url, json={"delta": stock, "reason": "restock"},
                                    headers={"Authorization": f"Bearer {admin}"}) as resp:
                assert resp.status in (200, 202), await resp.text()
    rng = random.Random(7)
    jobs = list(range(orders))
    latencies: list[float] = []
    accepted: list[str] = []
    refused = 0
    tokens = [services.token(f"bench-user-{i}") for i in range(clients)]

    async def client(n: int) -> None:
        nonlocal refused
        async with aiohttp.ClientSession() as session:
            base = workers[n % len(workers)].url
            while jobs:
                jobs.pop()
                lines = [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in rng.sample(skus, rng.randint(1, 3))]
                payment = "tok_ok" if rng.random() < 0.9 else "tok_declined"
                body = {"lines": lines, "payment": {"token": payment}, "email": "bench@example.com"}
                while True:
                    started = time.perf_counter()
                    async with session.post(f"{base}/v1/orders", json=body,
                                            headers={"Authorization": f"Bearer {tokens[n]}"}) as resp:
                        reply = await resp.json(content_type=None)
                    latencies.append(time.perf_counter() - started)
                    if resp.status != 503:
                        break
                    # Refused at the door (admission control): come back when told, as a shop would.
                    refused += 1
                    await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                if resp.status == 202:
                    accepted.append(reply["order_id"])

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    placing = time.perf_counter() - started

    store = SqlAlchemyStore(services.database_url, pool_size=2)
    try:
        while True:
            async with store.engine.connect() as conn:
                rows = (await conn.execute(text(
                    "select status, extract(epoch from updated_at - created_at) from orders "
                    "where order_id = any(:ids)"), {"ids": accepted})).all()
            pending = sum(r[0] in ("PENDING", "RESERVED") for r in rows)
            if len(rows) == len(accepted) and pending == 0:
                break
            if time.perf_counter() - started > 600:
                raise SystemExit(f"gave up: {pending} orders still undecided")
            await asyncio.sleep(0.25)  # poll the database until every order is decided
    finally:
        await store.close()
    decided = time.perf_counter() - started
    confirm = [float(r[1]) for r in rows if r[0] == "CONFIRMED"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[0]] = counts.get(r[0], 0) + 1
    return {
        "orders": orders, "clients": clients, "workers": len(workers), "accepted": len(accepted),
        "refused_then_retried": refused,
        "post_ms": {q: round(_pct(latencies, p) * 1000, 1) for q, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
        "post_ms_mean": round(statistics.mean(latencies) * 1000, 1),
        "accepted_per_s": round(len(accepted) / placing, 1),
        "decided_per_s": round(len(accepted) / decided, 1),
        "accept_to_confirm_ms": {q: round(_pct(confirm, p) * 1000, 1) for q, p in (("p50", 0.5), ("p99", 0.99))},
        "statuses": counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--stock", type=int, default=100_000, help="units restocked per SKU")
    parser.add_argument("--no-mailer", action="store_true",
                        help="queue emails but run no mailer (the pipeline alone, as with mailers on other machines)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="orion-bench-") as tmp, \
            running_services(Path(tmp), partitions=args.partitions, payment_timeout=10.0) as services:
        # Every order sends emails: a real SMTP server (aiosmtpd) takes them, as in production.
        mail = MailCatcher(Path(tmp) / "mail", port=free_port())
        mail.start()
        env = {"ORION_LOG_LEVEL": "warn", "ORION_SMTP_URL": f"smtp://{mail.host}:{mail.port}"}
        workers: list[Worker] = []
        mailer: Mailer | None = None
        memory = PeakMemory(workers)
        cpu: dict[str, float] = {}
        try:
            # Every process started is stopped in `finally`, even if a later one fails to start.
            for i in range(args.workers):
                workers.append(Worker(services, f"w{i}", env).start())
            mailer = None if args.no_mailer else Mailer(services, "m0", env).start()
            memory.start()
            report = asyncio.run(_place_all(services, workers, args.orders, args.clients, args.stock))
        finally:
            memory.done.set()
            cpu = {w.name: _cpu_seconds(w.proc.pid) for w in workers if w.proc is not None}
            if mailer is not None and mailer.proc is not None:
                cpu["mailer"] = _cpu_seconds(mailer.proc.pid)
            for w in workers:
                w.stop()
            if mailer is not None:
                mailer.stop()
            mail.stop()
        report["emails_received"] = len(mail.messages)
        report["cpu_seconds"] = {k: round(v, 1) for k, v in cpu.items()}
        report["worker_peak_rss_mb"] = {k: round(v, 1) for k, v in memory.peak.items()}
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
