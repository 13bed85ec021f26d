"""Open-loop overload and soak benchmark: a whole local stack under a fixed offered rate.

    # capacity probe, then 1x, 2x and 5x of it for 60 s each, a drain after each step
    .venv/bin/python -m bench.overload --scenario overload --mode http --workers 1
    # the same rates straight into the `orders` topic (aiokafka, acks=all): nothing is refused
    .venv/bin/python -m bench.overload --scenario overload --mode kafka --capacity 40
    # half of the capacity for 20 minutes: worker memory, CPU and /metrics every 30 s
    .venv/bin/python -m bench.overload --scenario soak --fraction 0.5 --duration 1200 --settle 120 \
        --worker-env ORION_ORDER_RETENTION=60
    # a quick end-to-end check of the generator itself
    .venv/bin/python -m bench.overload --probe-seconds 10 --step-seconds 10 --steps 1,2

Starts its own Kafka, PostgreSQL and `--workers` workers (no mailer unless `--mailer`: the
emails are queued, as with mailers on other machines), restocks every demo SKU, warms up,
and measures the capacity unless `--capacity` is given: a closed-loop probe where each of N
clients places an order and the next one as soon as that one is decided, for each N of
`--probe-clients` (default 16,32,64); capacity = the best level's decided orders per second.
By default a client learns of the decision from one shared poller of PostgreSQL
(`--probe-method poll`); `--probe-method wait` uses `POST /v1/orders?wait=30` instead, but
each held request makes the worker poll PostgreSQL itself, which on the 2-core machine costs
so much worker CPU that the probe measures the long-polling, not the pipeline (13 decided/s
with 8 clients, falling to 0 with 128, against 37/s with the shared poller).

Open loop: the send times of each step are fixed before it starts (Poisson or evenly spaced,
seeded) and every request is its own task launched at its intended time, whether or not
earlier ones have answered. Latencies are measured from the intended send time, so queueing
in the client or the server cannot hide (no coordinated omission); the lag between intended
and actual send time is reported to show the generator kept up. After each step it waits
(`--drain-timeout`) until every order accepted in the step is decided in PostgreSQL.

Prints a markdown table and writes `<results-dir>/<scenario>-<mode>[-<label>]-<UTC>.json`
and `.md` (with `--raw`, also every request as `.requests.csv.gz`). Not a test: it asserts
nothing and is not part of `make test`. Never run two of these (or any two Kafka stacks) at
once on a small machine: they would measure each other.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import orion_streams
from orion_devstack.ports import free_port
from orion_devstack.smtp import MailCatcher
from orion_devstack.stack import Mailer, Services, Worker, running_services
from orion_streams.domain.catalog import DEMO_PRODUCTS

DECIDED = ("CONFIRMED", "REJECTED", "PAYMENT_FAILED", "CANCELLED", "FULFILLED")
SKUS = [p.sku for p in DEMO_PRODUCTS]
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999))
DEFAULT_METRIC_PREFIXES = "orion_table_entries,orion_housekeeping,orion_admission,orion_state_retired"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- numbers


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _dist(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> dict[str, Any]:
    """count, mean, quantiles and max of `values` multiplied by `scale`."""
    out: dict[str, Any] = {"n": len(values)}
    if not values:
        return out
    ordered = sorted(values)
    out["mean"] = round(sum(ordered) / len(ordered) * scale, digits)
    for name, q in QUANTILES:
        out[name] = round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * scale, digits)
    out["max"] = round(ordered[-1] * scale, digits)
    return out


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------- processes (/proc)


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds incl. reaped children) of every process."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        table[int(entry.name)] = (int(fields[1]), ticks / CLK_TCK)
    return table


def _tree_cpu(root: int | None, table: dict[int, tuple[int, float]]) -> float | None:
    """CPU seconds of a process and all its descendants (live, and reaped via cutime)."""
    if root is None or root not in table:
        return None
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Pids:
    """The processes whose resources are recorded."""

    workers: dict[str, int]
    broker: int | None
    postgres: int | None


def _usage(pids: Pids) -> dict[str, Any]:
    """A snapshot of CPU seconds (process trees) and the clock; subtract two to get use."""
    table = _proc_table()
    return {
        "mono": time.monotonic(),
        "workers": {name: _tree_cpu(pid, table) for name, pid in pids.workers.items()},
        "broker": _tree_cpu(pids.broker, table),
        "postgres": _tree_cpu(pids.postgres, table),
        "generator": _own_cpu(),
    }


def _usage_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    def sub(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(b - a, 2)

    return {
        "wall_s": round(after["mono"] - before["mono"], 2),
        "workers_cpu_s": {k: sub(v, after["workers"].get(k)) for k, v in before["workers"].items()},
        "broker_cpu_s": sub(before["broker"], after["broker"]),
        "postgres_cpu_s": sub(before["postgres"], after["postgres"]),
        "generator_cpu_s": sub(before["generator"], after["generator"]),
    }


class RssSampler(threading.Thread):
    """Samples the workers' resident memory every `interval` seconds until stopped."""

    def __init__(self, pids: dict[str, int], interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pids = pids
        self.interval = interval
        self.lock = threading.Lock()
        self.peak: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.done = threading.Event()

    def reset_peak(self) -> None:
        with self.lock:
            self.peak = dict(self.last)

    def snapshot(self) -> tuple[dict[str, float], dict[str, float]]:
        """(last, peak since reset) in MB."""
        with self.lock:
            return dict(self.last), dict(self.peak)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            for name, pid in self.pids.items():
                rss = _rss_mb(pid)
                if rss is None:
                    continue
                with self.lock:
                    self.last[name] = rss
                    self.peak[name] = max(self.peak.get(name, 0.0), rss)


def _broker_pid(root: Path) -> int | None:
    """The broker's JVM: running_services keeps it in <root>/kafka (broker.pid)."""
    try:
        return int((root / "kafka" / "broker.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for entry in os.scandir("/proc"):  # fall back to the JVM whose command line names root
        if entry.name.isdigit():
            try:
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                continue
            if b"kafka.Kafka" in cmd and str(root).encode() in cmd:
                return int(entry.name)
    return None


# ---------------------------------------------------------------- code under test


def _code_under_test() -> dict[str, Any]:
    """Which orion_streams this process imports, its git commit and uncommitted files."""
    pkg = Path(orion_streams.__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", "-C", str(pkg), *args], capture_output=True, text=True, timeout=30
            )
            return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line for line in git("status", "--porcelain", "--", ".").splitlines() if line]
    return {
        "orion_streams_file": str(pkg / "__init__.py"),
        "git_commit": git("rev-parse", "HEAD") or None,
        "git_toplevel": git("rev-parse", "--show-toplevel") or None,
        "orion_streams_uncommitted": dirty,
        "python": sys.version.split()[0],
        "cwd": os.getcwd(),
        "pythonpath": os.environ.get("PYTHONPATH"),
    }


def _worker_code(worker: Worker) -> dict[str, Any]:
    """Which orion_streams a worker runs: its cwd, PYTHONPATH, and what that env imports."""
    out: dict[str, Any] = {"pid": worker.proc.pid if worker.proc else None}
    if worker.proc is None:
        return out
    pid = worker.proc.pid
    try:
        out["cwd"] = os.readlink(f"/proc/{pid}/cwd")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        env = dict(e.decode(errors="replace").split("=", 1) for e in environ if b"=" in e)
        out["pythonpath"] = env.get("PYTHONPATH")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        out["cmdline"] = [c.decode(errors="replace") for c in cmdline if c]
        # Same interpreter, environment and directory as the worker: the same import.
        done = subprocess.run(
            [out["cmdline"][0], "-c", "import orion_streams; print(orion_streams.__file__)"],
            env=env,
            cwd=out["cwd"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        out["imports"] = done.stdout.strip() or done.stderr.strip()[-300:]
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        out["error"] = repr(exc)
    return out


# ---------------------------------------------------------------- orders


@dataclass(slots=True)
class Req:
    """One offered order and what became of it. Times are time.monotonic() seconds."""

    idx: int
    customer: int
    card: str
    lines: list[dict[str, Any]]
    intended: float = 0.0
    sent: float | None = None
    answered: float | None = None
    status: int | None = None  # HTTP status; None in kafka mode or without an answer
    order_id: str | None = None
    retry_after: str | None = None
    error: str | None = None  # "timeout" or the exception class; None when answered
    worker: int = 0
    order_status: str | None = None  # the order's status in a 200/202 body
    decided_seen: float | None = None  # closed loop: when the client saw the order decided

    @property
    def accepted(self) -> bool:
        return self.order_id is not None and self.error is None


class Orders:
    """Random orders of 1-3 demo lines (1-3 units each) from many distinct customers."""

    def __init__(
        self, services: Services, customers: int, declined_share: float, seed: int
    ) -> None:
        self.rng = random.Random(seed)
        self.customers = customers
        self.declined_share = declined_share
        self.tokens = [services.token(f"bench-user-{i}", ttl=48 * 3600) for i in range(customers)]

    def make(self, idx: int, workers: int, rng: random.Random | None = None) -> Req:
        rng = rng or self.rng
        lines = [
            {"sku": sku, "quantity": rng.randint(1, 3)}
            for sku in rng.sample(SKUS, rng.randint(1, 3))
        ]
        card = "tok_declined" if rng.random() < self.declined_share else "tok_ok"
        return Req(idx, rng.randrange(self.customers), card, lines, worker=rng.randrange(workers))

    def http_body(self, req: Req) -> dict[str, Any]:
        return {
            "lines": req.lines,
            "payment": {"token": req.card},
            "email": f"bench-user-{req.customer}@example.com",
        }


def _offsets(rate: float, seconds: float, arrivals: str, rng: random.Random) -> list[float]:
    """Intended send times (seconds from the step start) at `rate` per second."""
    if rate <= 0:
        return []
    if arrivals == "uniform":
        return [i / rate for i in range(int(round(rate * seconds)))]
    out, t = [], rng.expovariate(rate)
    while t < seconds:
        out.append(t)
        t += rng.expovariate(rate)
    return out


# ---------------------------------------------------------------- the bench


@dataclass
class Config:
    scenario: str
    mode: str
    label: str | None
    workers: int
    partitions: int
    payment_timeout: float
    mailer: bool
    worker_env: dict[str, str]
    capacity: float | None
    probe_clients: list[int]
    probe_method: str
    probe_wait: float
    warmup_seconds: float
    probe_seconds: float
    steps: list[float]
    step_seconds: float
    drain_timeout: float
    arrivals: str
    customers: int
    declined_share: float
    stock: int
    request_timeout: float
    connection_limit: int
    seed: int
    rate: float | None
    fraction: float
    duration: float
    sample_interval: float
    idle_seconds: float
    fulfil_after: float
    settle: float
    metric_prefixes: list[str]
    results_dir: str
    raw: bool


@dataclass
class Bench:
    """A running stack and the clients the measurement shares."""

    cfg: Config
    services: Services
    workers: list[Worker]
    pids: Pids
    rss: RssSampler
    orders: Orders
    session: aiohttp.ClientSession = field(init=False)
    engine: AsyncEngine = field(init=False)
    in_flight: int = 0
    in_flight_peak: int = 0
    all_requests: list[tuple[str, Req]] = field(default_factory=list)
    # Unix time minus monotonic time: orders' timestamps in PostgreSQL are Unix times.
    clock_offset: float = field(default_factory=lambda: time.time() - time.monotonic())

    def wall(self, mono: float) -> float:
        """A time.monotonic() value as a Unix timestamp."""
        return mono + self.clock_offset

    def url(self, req: Req) -> str:
        return self.workers[req.worker % len(self.workers)].url

    # ------------------------------------------------------------ set-up

    async def restock(self) -> None:
        admin = self.services.token("bench-admin", ("admin",))
        headers = {"Authorization": f"Bearer {admin}"}
        base = self.workers[0].url
        for sku in SKUS:
            async with self.session.post(
                f"{base}/v1/inventory/{sku}/adjustments",
                json={"delta": self.cfg.stock, "reason": "restock"},
                headers=headers,
            ) as resp:
                if resp.status not in (200, 202):
                    raise RuntimeError(f"restock {sku}: {resp.status} {await resp.text()}")
        deadline = time.monotonic() + 120
        for sku in SKUS:  # the adjustment goes through Kafka: wait until it is applied
            while True:
                async with self.session.get(f"{base}/v1/inventory/{sku}", headers=headers) as r:
                    level = await r.json() if r.status == 200 else {}
                if level.get("available", 0) >= self.cfg.stock:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"restock of {sku} not applied: {level}")
                await asyncio.sleep(0.5)

    # ------------------------------------------------------------ closed loop

    async def closed_loop(self, seconds: float, clients: int, tag: str) -> list[Req]:
        """`clients` clients each placing an order and the next one once it is decided.

        --probe-method wait: `POST /v1/orders?wait=` holds the request until the order is
        decided (the worker polls PostgreSQL for each held request). poll: a plain POST, then
        the client waits until one shared poller (a single batched query every 0.1 s) sees
        the order decided, so the probe costs the worker nothing beyond the orders."""
        cfg = self.cfg
        done: list[Req] = []
        deadline = time.monotonic() + seconds
        timeout = aiohttp.ClientTimeout(total=cfg.probe_wait + 30)
        waiters: dict[str, asyncio.Future[tuple[float, str]]] = {}
        clients_left = clients

        async def poller() -> None:
            query = text(
                "select order_id, status from orders "
                "where order_id = any(:ids) and status = any(:decided)"
            )
            while clients_left:
                if waiters:
                    async with self.engine.connect() as conn:
                        rows = (
                            await conn.execute(
                                query, {"ids": list(waiters), "decided": list(DECIDED)}
                            )
                        ).all()
                    seen = time.monotonic()
                    for oid, status in rows:
                        fut = waiters.pop(oid, None)
                        if fut is not None and not fut.done():
                            fut.set_result((seen, status))
                await asyncio.sleep(0.1)

        async def client(n: int) -> None:
            nonlocal clients_left
            try:
                while time.monotonic() < deadline:
                    req = self.orders.make(len(done), len(self.workers))
                    req.worker = n
                    req.intended = req.sent = time.monotonic()
                    if cfg.probe_method == "wait":
                        await self._post(req, f"?wait={cfg.probe_wait:g}", timeout)
                        if req.status == 200 and req.order_status in DECIDED:
                            req.decided_seen = req.answered
                    else:
                        await self._post(req, "", timeout)
                        if req.accepted and req.order_id is not None:
                            fut = asyncio.get_running_loop().create_future()
                            waiters[req.order_id] = fut
                            try:
                                req.decided_seen, req.order_status = await asyncio.wait_for(
                                    fut, cfg.probe_wait
                                )
                            except TimeoutError:
                                waiters.pop(req.order_id, None)
                    done.append(req)
                    if req.error is not None:
                        await asyncio.sleep(0.5)  # a failing stack: do not spin
            finally:
                clients_left -= 1

        polling = asyncio.create_task(poller())
        try:
            await asyncio.gather(*(client(n) for n in range(clients)))
        finally:
            clients_left = 0
            await polling
        self.all_requests.extend((tag, r) for r in done)
        return done

    async def probe(self) -> dict[str, Any]:
        """Closed loop at each concurrency of --probe-clients; capacity = the best level."""
        levels = [await self._probe_level(n) for n in self.cfg.probe_clients]
        best = max(levels, key=lambda level: float(level["capacity_per_s"]))
        ids = [oid for level in levels for oid in level.pop("order_ids")]
        return {**best, "levels": levels, "order_ids": ids}

    async def _probe_level(self, clients: int) -> dict[str, Any]:
        cfg = self.cfg
        before = await asyncio.to_thread(_usage, self.pids)
        start = time.monotonic()
        reqs = await self.closed_loop(cfg.probe_seconds, clients, f"probe-{clients}")
        used = _usage_delta(before, await asyncio.to_thread(_usage, self.pids))
        end = start + cfg.probe_seconds  # answers after this are the closed loop's tail
        settled = [r for r in reqs if r.decided_seen is not None]
        in_window = [r for r in settled if r.decided_seen is not None and r.decided_seen <= end]
        capacity = len(in_window) / cfg.probe_seconds
        lat = [r.decided_seen - r.intended for r in settled if r.decided_seen is not None]
        outcomes = Counter(str(r.status) if r.error is None else r.error for r in reqs)
        return {
            "clients": clients,
            "seconds": cfg.probe_seconds,
            "requests": len(reqs),
            "outcomes": dict(outcomes),
            "decided_in_time": len(settled),
            "capacity_per_s": round(capacity, 2),
            "latency_ms": _dist(lat, 1000),
            "usage": used,
            "order_ids": [r.order_id for r in reqs if r.order_id],
        }

    # ------------------------------------------------------------ open loop

    async def _post(self, req: Req, query: str, timeout: aiohttp.ClientTimeout) -> None:
        token = self.orders.tokens[req.customer]
        self.in_flight += 1
        self.in_flight_peak = max(self.in_flight_peak, self.in_flight)
        req.sent = time.monotonic()
        try:
            async with self.session.post(
                f"{self.url(req)}/v1/orders{query}",
                json=self.orders.http_body(req),
                headers={"Authorization": f"Bearer {token}"},
                timeout=timeout,
            ) as resp:
                req.status = resp.status
                req.retry_after = resp.headers.get("Retry-After")
                raw = await resp.read()
                req.answered = time.monotonic()
                if resp.status in (200, 202):
                    body = json.loads(raw)
                    req.order_id = body.get("order_id")
                    req.order_status = body.get("status")
        except TimeoutError:
            req.error = "timeout"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            req.error = type(exc).__name__
        finally:
            self.in_flight -= 1
            if req.error is not None:
                req.answered = None

    async def _produce(self, producer: Any, req: Req) -> None:
        self.in_flight += 1
        self.in_flight_peak = max(self.in_flight_peak, self.in_flight)
        order_id, event_id = str(uuid.uuid4()), str(uuid.uuid4())
        value = {
            "type": "OrderPlaced",
            "event_id": event_id,
            "order_id": order_id,
            "user_id": f"bench-user-{req.customer}",
            "email": f"bench-user-{req.customer}@example.com",
            "lines": req.lines,
            "payment": {"token": req.card},
        }
        headers = [("correlation-id", f"bench-{event_id}".encode()), ("actor", b"service:bench")]
        req.sent = time.monotonic()
        try:
            await asyncio.wait_for(
                producer.send_and_wait(
                    "orders", json.dumps(value).encode(), key=order_id.encode(), headers=headers
                ),
                self.cfg.request_timeout,
            )
            req.answered = time.monotonic()
            req.order_id = order_id
        except TimeoutError:
            req.error = "timeout"
        except Exception as exc:  # any producer failure is an error of this send
            req.error = type(exc).__name__
        finally:
            self.in_flight -= 1

    async def offer(
        self, rate: float, seconds: float, seed: int, producer: Any = None
    ) -> list[Req]:
        """Open loop: every order is launched at its precomputed time as its own task."""
        rng = random.Random(seed)  # the same seed, the same orders at the same times
        offsets = _offsets(rate, seconds, self.cfg.arrivals, rng)
        reqs = [self.orders.make(i, len(self.workers), rng) for i in range(len(offsets))]
        timeout = aiohttp.ClientTimeout(total=self.cfg.request_timeout)
        start = time.monotonic() + 0.05
        tasks: list[asyncio.Task[None]] = []
        for req, offset in zip(reqs, offsets, strict=True):
            req.intended = start + offset
            delay = req.intended - time.monotonic()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            if producer is None:
                tasks.append(asyncio.create_task(self._post(req, "", timeout)))
            else:
                tasks.append(asyncio.create_task(self._produce(producer, req)))
        await asyncio.gather(*tasks)
        return reqs

    # ------------------------------------------------------------ drain

    async def drain(
        self, ids: list[str], deadline_s: float, progress_every: float = 10.0
    ) -> dict[str, Any]:
        """Poll PostgreSQL until every order in `ids` is decided or the deadline passes."""
        started = time.monotonic()
        decided: dict[str, tuple[str, str | None, float, float]] = {}
        waiting = list(dict.fromkeys(ids))
        progress: list[tuple[float, int]] = []
        next_progress = started
        query = text(
            # A fulfilled order (the soak's warehouse) was decided when it was confirmed:
            # its audit says when; updated_at moved on with the fulfilment.
            "select o.order_id, o.status, o.failure_reason, extract(epoch from o.created_at), "
            "extract(epoch from case when o.status <> 'FULFILLED' then o.updated_at else coalesce("
            "(select e.at from order_events e where e.order_id = o.order_id "
            "and e.type = 'OrderStatusChanged' and e.data->>'to' = 'CONFIRMED' order by e.seq limit 1), "
            "o.updated_at) end) from orders o "
            "where o.order_id = any(:ids) and o.status = any(:decided)"
        )
        while True:
            still: list[str] = []
            for i in range(0, len(waiting), 5000):
                batch = waiting[i : i + 5000]
                async with self.engine.connect() as conn:
                    rows = (
                        await conn.execute(query, {"ids": batch, "decided": list(DECIDED)})
                    ).all()
                for oid, status, reason, created, updated in rows:
                    decided[oid] = (status, reason, float(created), float(updated))
                found = {r[0] for r in rows}
                still.extend(o for o in batch if o not in found)
            waiting = still
            now = time.monotonic()
            if now >= next_progress:
                progress.append((round(now - started, 1), len(waiting)))
                next_progress = now + progress_every
            if not waiting or now - started > deadline_s:
                break
            await asyncio.sleep(0.5)
        left: dict[str, int] = {}
        if waiting:
            progress.append((round(time.monotonic() - started, 1), len(waiting)))
            async with self.engine.connect() as conn:
                for i in range(0, len(waiting), 5000):
                    rows = (
                        await conn.execute(
                            text("select status from orders where order_id = any(:ids)"),
                            {"ids": waiting[i : i + 5000]},
                        )
                    ).all()
                    for (status,) in rows:
                        left[status] = left.get(status, 0) + 1
            left["(no row)"] = len(waiting) - sum(left.values())
        return {
            "decided": decided,
            "seconds": round(time.monotonic() - started, 2),
            "deadline_passed": bool(waiting),
            "undecided": len(waiting),
            "undecided_by_status": left,
            "progress": progress,
        }

    # ------------------------------------------------------------ metrics

    async def metrics_lines(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        prefixes = tuple(self.cfg.metric_prefixes)
        for w in self.workers:
            try:
                async with self.session.get(
                    f"{w.url}/metrics", timeout=aiohttp.ClientTimeout(total=10)
                ) as resp:
                    body = await resp.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                out[w.name] = [f"# error: {exc!r}"]
                continue
            out[w.name] = [
                line for line in body.splitlines() if prefixes and line.startswith(prefixes)
            ]
        return out


# ---------------------------------------------------------------- figures of a step


def _step_figures(
    bench: Bench,
    reqs: list[Req],
    step_start: float,
    send_end: float,
    drained: dict[str, Any],
    used: dict[str, Any],
    rss_end: dict[str, float],
    rss_peak: dict[str, float],
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    mode = bench.cfg.mode
    decided: dict[str, tuple[str, str | None, float, float]] = drained["decided"]
    accepted = [r for r in reqs if r.accepted]
    statuses = Counter(r.status for r in reqs if r.status is not None)
    errors = Counter(r.error for r in reqs if r.error is not None)
    other_http = {str(s): n for s, n in statuses.items() if s not in (200, 202, 429, 503)}
    mine = [decided[r.order_id] for r in accepted if r.order_id in decided]
    by_status = Counter(d[0] for d in mine)
    failures = Counter(f"{d[0]}: {d[1]}" for d in mine if d[0] not in ("CONFIRMED", "FULFILLED"))
    pf_ok = sum(
        1
        for r in accepted
        if r.order_id in decided
        and decided[r.order_id][0] == "PAYMENT_FAILED"
        and r.card == "tok_ok"
    )
    ok_orders = sum(1 for r in accepted if r.card == "tok_ok")
    confirmed = by_status.get("CONFIRMED", 0) + by_status.get("FULFILLED", 0)
    start_wall = bench.wall(step_start)
    last_decided = max((d[3] for d in mine), default=None)
    span = None if last_decided is None else last_decided - start_wall
    if mode == "http":
        a2d = [d[3] - d[2] for d in mine]
    else:
        intended = {r.order_id: bench.wall(r.intended) for r in accepted}
        a2d = [decided[o][3] - intended[o] for o in intended if o in decided]
    lat_all = [r.answered - r.intended for r in reqs if r.answered is not None]
    lat_acc = [r.answered - r.intended for r in accepted if r.answered is not None]
    service = [r.answered - r.sent for r in reqs if r.answered is not None and r.sent is not None]
    lag = [r.sent - r.intended for r in reqs if r.sent is not None]
    workers_cpu = [v for v in used["workers_cpu_s"].values() if v is not None]
    n_decided = len(mine)
    retry_after = Counter(r.retry_after for r in reqs if r.retry_after is not None)
    return {
        "offered": len(reqs),
        "offered_rate_target": round(rate, 2),
        "offered_per_s": round(len(reqs) / seconds, 2) if seconds else None,
        "send_seconds": round(send_end - step_start, 2),
        "accepted": len(accepted),
        "refused_503": statuses.get(503, 0),
        "refused_429": statuses.get(429, 0),
        "other_http": other_http,
        "errors": dict(errors),
        "retry_after": dict(retry_after.most_common(10)),
        "decided": n_decided,
        "decided_by_status": dict(by_status),
        "confirmed": confirmed,
        "failures": dict(failures.most_common()),
        "payment_failed_tok_ok": pf_ok,
        "accepted_tok_ok": ok_orders,
        "accepted_tok_declined": len(accepted) - ok_orders,
        "cards_offered": dict(Counter(r.card for r in reqs)),
        "last_decided_after_s": _round(span, 2),
        "goodput_per_s": _round(confirmed / span if span else None, 2),
        "decided_per_s": _round(n_decided / span if span else None, 2),
        "drain": {k: v for k, v in drained.items() if k != "decided"},
        "latency_ms_all": _dist(lat_all, 1000),
        "latency_ms_accepted": _dist(lat_acc, 1000),
        "service_time_ms": _dist(service, 1000),
        "send_lag_ms": _dist(lag, 1000, 2),
        "accept_to_decision_s": _dist(a2d, 1, 3),
        "accept_to_decision_start": "created_at" if mode == "http" else "intended send time",
        "usage": used,
        "worker_cpu_ms_per_decided": _round(
            sum(workers_cpu) * 1000 / n_decided if n_decided and workers_cpu else None, 2
        ),
        "generator_cpu_share": _round(
            used["generator_cpu_s"] / used["wall_s"]
            if used["generator_cpu_s"] is not None
            else None,
            3,
        ),
        "worker_rss_mb_end": {k: round(v, 1) for k, v in rss_end.items()},
        "worker_rss_mb_peak": {k: round(v, 1) for k, v in rss_peak.items()},
        "in_flight_peak": bench.in_flight_peak,
    }


async def _run_step(
    bench: Bench, rate: float, seconds: float, seed: int, producer: Any
) -> tuple[dict[str, Any], list[Req]]:
    bench.in_flight_peak = 0
    bench.rss.reset_peak()
    before = await asyncio.to_thread(_usage, bench.pids)
    step_start = time.monotonic()
    reqs = await bench.offer(rate, seconds, seed, producer)
    send_end = time.monotonic()
    rss_end, rss_peak = bench.rss.snapshot()
    ids = [r.order_id for r in reqs if r.accepted and r.order_id]
    drained = await bench.drain(ids, bench.cfg.drain_timeout)
    used = _usage_delta(before, await asyncio.to_thread(_usage, bench.pids))
    _, rss_peak_drain = bench.rss.snapshot()
    fig = _step_figures(
        bench, reqs, step_start, send_end, drained, used, rss_end, rss_peak, rate, seconds
    )
    fig["worker_rss_mb_peak_incl_drain"] = {k: round(v, 1) for k, v in rss_peak_drain.items()}
    return fig, reqs


# ---------------------------------------------------------------- scenarios


async def _setup(bench: Bench) -> dict[str, Any]:
    """Restock, warm up, measure the capacity (unless given) and drain what that placed."""
    cfg = bench.cfg
    out: dict[str, Any] = {}
    await bench.restock()
    ids: list[str] = []
    if cfg.warmup_seconds > 0:
        warm = await bench.closed_loop(cfg.warmup_seconds, cfg.probe_clients[0], "warmup")
        ids += [r.order_id for r in warm if r.order_id]
        out["warmup"] = {
            "seconds": cfg.warmup_seconds,
            "requests": len(warm),
            "outcomes": dict(Counter(str(r.status) if r.error is None else r.error for r in warm)),
        }
    if cfg.capacity is None:
        probe = await bench.probe()
        ids += probe.pop("order_ids")
        out["probe"] = probe
        out["capacity_per_s"] = probe["capacity_per_s"]
        out["capacity_source"] = "probe"
    else:
        out["capacity_per_s"] = cfg.capacity
        out["capacity_source"] = "--capacity"
    drained = await bench.drain(ids, cfg.drain_timeout)
    out["setup_drain"] = {k: v for k, v in drained.items() if k != "decided"}
    out["setup_drain"]["statuses"] = dict(Counter(d[0] for d in drained["decided"].values()))
    return out


async def _start_producer(bench: Bench) -> Any:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bench.services.bootstrap, acks="all", client_id="orion-bench"
    )
    await producer.start()
    return producer


async def scenario_overload(bench: Bench, report: dict[str, Any]) -> None:
    cfg = bench.cfg
    setup = await _setup(bench)
    report.update(setup)
    capacity = float(setup["capacity_per_s"])
    producer = await _start_producer(bench) if cfg.mode == "kafka" else None
    try:
        for i, mult in enumerate(cfg.steps):
            rate = capacity * mult
            print(
                f"[{_now()}] step {mult:g}x: {rate:.1f}/s for {cfg.step_seconds:g} s",
                file=sys.stderr,
                flush=True,
            )
            fig, reqs = await _run_step(bench, rate, cfg.step_seconds, cfg.seed + 1 + i, producer)
            fig["multiplier"] = mult
            fig["metrics_after"] = await bench.metrics_lines()
            report["steps"].append(fig)
            bench.all_requests.extend((f"step-{mult:g}x", r) for r in reqs)
            print(f"[{_now()}] {_row(fig)}", file=sys.stderr, flush=True)
    finally:
        if producer is not None:
            await producer.stop()


async def _idle(bench: Bench, seconds: float) -> dict[str, Any]:
    before = await asyncio.to_thread(_usage, bench.pids)
    await asyncio.sleep(seconds)
    used = _usage_delta(before, await asyncio.to_thread(_usage, bench.pids))
    return {
        "seconds": used["wall_s"],
        "worker_cpu_pct": {
            k: _round(v * 100 / used["wall_s"] if v is not None else None, 2)
            for k, v in used["workers_cpu_s"].items()
        },
        "usage": used,
    }


async def scenario_soak(bench: Bench, report: dict[str, Any]) -> None:
    cfg = bench.cfg
    setup = await _setup(bench)
    report.update(setup)
    rate = cfg.rate if cfg.rate is not None else cfg.fraction * float(setup["capacity_per_s"])
    report["soak_rate_per_s"] = round(rate, 2)
    print(f"[{_now()}] idle {cfg.idle_seconds:g} s before the load", file=sys.stderr, flush=True)
    report["idle_before"] = await _idle(bench, cfg.idle_seconds)
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    t0 = time.monotonic()

    async def sampler() -> None:
        last = await asyncio.to_thread(_usage, bench.pids)
        while True:
            try:
                await asyncio.wait_for(stop.wait(), cfg.sample_interval)
                return
            except TimeoutError:
                pass
            now = await asyncio.to_thread(_usage, bench.pids)
            used = _usage_delta(last, now)
            last = now
            rss = {name: _rss_mb(pid) for name, pid in bench.pids.workers.items()}
            samples.append(
                {
                    "t_s": round(now["mono"] - t0, 1),
                    "worker_rss_mb": {k: _round(v) for k, v in rss.items()},
                    "worker_cpu_pct": {
                        k: _round(v * 100 / used["wall_s"] if v is not None else None, 1)
                        for k, v in used["workers_cpu_s"].items()
                    },
                    "broker_cpu_pct": _round(
                        used["broker_cpu_s"] * 100 / used["wall_s"]
                        if used["broker_cpu_s"] is not None
                        else None,
                        1,
                    ),
                    "postgres_cpu_pct": _round(
                        used["postgres_cpu_s"] * 100 / used["wall_s"]
                        if used["postgres_cpu_s"] is not None
                        else None,
                        1,
                    ),
                    "generator_cpu_pct": _round(
                        (used["generator_cpu_s"] or 0) * 100 / used["wall_s"], 1
                    ),
                    "in_flight": bench.in_flight,
                    "metrics": await bench.metrics_lines(),
                }
            )
            print(
                f"[{_now()}] soak sample t={samples[-1]['t_s']:.0f}s rss={samples[-1]['worker_rss_mb']} "
                f"cpu%={samples[-1]['worker_cpu_pct']}",
                file=sys.stderr,
                flush=True,
            )

    fulfilled = [0, 0]  # asked, refused

    async def warehouse() -> None:
        """Ships confirmed orders `fulfil_after` seconds after their confirmation."""
        token = bench.services.token("bench-warehouse", ("service",))
        query = text(
            "select order_id from orders where status = 'CONFIRMED' "
            "and updated_at < now() - make_interval(secs => :after) order by updated_at limit 200"
        )
        asked: set[str] = set()
        while not stop.is_set():
            async with bench.engine.connect() as conn:
                due = [r[0] for r in await conn.execute(query, {"after": cfg.fulfil_after})]
            for order_id in due:
                if order_id in asked:
                    continue
                url = f"{bench.workers[len(asked) % len(bench.workers)].url}/v1/orders/{order_id}/fulfil"
                async with bench.session.post(
                    url, headers={"Authorization": f"Bearer {token}"}
                ) as resp:
                    await resp.read()
                    fulfilled[0 if resp.status == 202 else 1] += 1
                asked.add(order_id)
            if len(asked) > 100_000:
                asked.clear()  # the orders table says what is still CONFIRMED
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass

    task = asyncio.create_task(sampler())
    shipper = asyncio.create_task(warehouse()) if cfg.fulfil_after > 0 else None
    try:
        print(f"[{_now()}] soak: {rate:.1f}/s for {cfg.duration:g} s", file=sys.stderr, flush=True)
        fig, reqs = await _run_step(bench, rate, cfg.duration, cfg.seed + 1, None)
        if cfg.settle > 0:
            print(f"[{_now()}] settle {cfg.settle:g} s", file=sys.stderr, flush=True)
            await asyncio.sleep(cfg.settle)  # a fixed span of the benchmark, not a wait for a condition
    finally:
        stop.set()
        await task
        if shipper is not None:
            await shipper
    report["fulfilled"] = {"asked": fulfilled[0], "refused": fulfilled[1]}
    fig["multiplier"] = round(rate / float(setup["capacity_per_s"]), 3)
    report["steps"].append(fig)
    bench.all_requests.extend(("soak", r) for r in reqs)
    print(f"[{_now()}] idle {cfg.idle_seconds:g} s after the load", file=sys.stderr, flush=True)
    report["idle_after"] = await _idle(bench, cfg.idle_seconds)
    report["samples"] = samples
    rss_series: dict[str, list[float]] = {}
    for s in samples:
        for k, v in s["worker_rss_mb"].items():
            if v is not None:
                rss_series.setdefault(k, []).append(v)
    report["soak_summary"] = {
        "rss_mb": {k: {"first": v[0], "last": v[-1], "max": max(v)} for k, v in rss_series.items()},
        "idle_cpu_pct_before": report["idle_before"]["worker_cpu_pct"],
        "idle_cpu_pct_after": report["idle_after"]["worker_cpu_pct"],
        "fulfilled": report.get("fulfilled"),
    }


# ---------------------------------------------------------------- output


def _now() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _row(fig: dict[str, Any]) -> str:
    la, ad = fig["latency_ms_all"], fig["accept_to_decision_s"]
    rss_end = "/".join(_fmt(v, 0) for v in fig["worker_rss_mb_end"].values())
    rss_peak = "/".join(_fmt(v, 0) for v in fig["worker_rss_mb_peak"].values())
    cells = [
        f"{fig['multiplier']:g}x",
        _fmt(fig["offered_per_s"]),
        str(fig["accepted"]),
        f"{fig['refused_503']}/{fig['refused_429']}",
        str(fig["decided"]),
        str(fig["confirmed"]),
        str(fig["payment_failed_tok_ok"]),
        _fmt(fig["goodput_per_s"]),
        f"{_fmt(la.get('p50'), 0)}/{_fmt(la.get('p99'), 0)}/{_fmt(la.get('max'), 0)}",
        f"{_fmt(ad.get('p50'), 1)}/{_fmt(ad.get('p99'), 1)}",
        _fmt(fig["worker_cpu_ms_per_decided"]),
        f"{rss_end} ({rss_peak})",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| step | offered/s | accepted | refused 503/429 | decided | confirmed "
    "| PAYMENT_FAILED (tok_ok) | goodput/s | POST p50/p99/max ms | accept→decision p50/p99 s "
    "| worker CPU ms/decided | worker RSS MB end (peak) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)
DETAIL_HEADER = (
    "| step | offered | errors/timeouts | other HTTP | accepted p50/p99/max ms "
    "| send lag p50/p99/max ms | in flight peak | drain s | undecided | last decided after s "
    "| CPU s worker/broker/pg/generator | failures |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _detail_row(fig: dict[str, Any]) -> str:
    acc, lag, u = fig["latency_ms_accepted"], fig["send_lag_ms"], fig["usage"]
    workers_cpu = sum(v for v in u["workers_cpu_s"].values() if v is not None)
    drain = fig["drain"]
    undecided = str(drain["undecided"]) + (" (deadline passed)" if drain["deadline_passed"] else "")
    failures = "; ".join(f"{k} ×{v}" for k, v in fig["failures"].items()) or "-"
    cells = [
        f"{fig['multiplier']:g}x",
        str(fig["offered"]),
        ", ".join(f"{k} {v}" for k, v in fig["errors"].items()) or "0",
        ", ".join(f"{k}: {v}" for k, v in fig["other_http"].items()) or "-",
        f"{_fmt(acc.get('p50'), 0)}/{_fmt(acc.get('p99'), 0)}/{_fmt(acc.get('max'), 0)}",
        f"{_fmt(lag.get('p50'), 1)}/{_fmt(lag.get('p99'), 1)}/{_fmt(lag.get('max'), 1)}",
        str(fig["in_flight_peak"]),
        _fmt(drain["seconds"]),
        undecided,
        _fmt(fig["last_decided_after_s"]),
        f"{workers_cpu:.1f}/{_fmt(u['broker_cpu_s'])}/{_fmt(u['postgres_cpu_s'])}"
        f"/{_fmt(u['generator_cpu_s'])}",
        failures,
    ]
    return "| " + " | ".join(cells) + " |"


def _markdown(report: dict[str, Any]) -> str:
    cfg, code = report["config"], report["code"]
    lines = [
        f"# bench.overload: {cfg['scenario']} / {cfg['mode']}"
        + (f" / {cfg['label']}" if cfg["label"] else ""),
        "",
        f"- started {report['started_at']}, total {_fmt(report.get('total_seconds'), 0)} s",
        f"- code: {code['orion_streams_file']} at {code['git_commit']}"
        + (
            f" (uncommitted: {len(code['orion_streams_uncommitted'])} files)"
            if code["orion_streams_uncommitted"]
            else ""
        ),
        f"- workers {cfg['workers']}, partitions {cfg['partitions']}, payment timeout "
        f"{cfg['payment_timeout']:g} s, mailer {'yes' if cfg['mailer'] else 'no'}, worker env "
        f"{cfg['worker_env'] or '-'}",
        f"- arrivals {cfg['arrivals']}, {cfg['customers']} customers, "
        f"{cfg['declined_share']:.0%} tok_declined, request timeout {cfg['request_timeout']:g} s",
        f"- capacity {_fmt(report.get('capacity_per_s'), 2)}/s ({report.get('capacity_source')})",
        "- latencies from the intended send time to the "
        + ("produce ack (acks=all)" if cfg["mode"] == "kafka" else "HTTP answer")
        + "; accept→decision from "
        + ("the intended send time" if cfg["mode"] == "kafka" else "orders.created_at")
        + " to orders.updated_at (a fulfilled order: to its confirmation in the audit); RSS end = at the end of sending, peak = during sending",
    ]
    probe = report.get("probe")
    if probe:
        lines.append(
            f"- probe ({cfg['probe_method']}): {probe['clients']} closed-loop clients, "
            f"{probe['seconds']:g} s, {probe['decided_in_time']} decided in time, latency p50/p99 "
            f"{_fmt(probe['latency_ms'].get('p50'), 0)}/{_fmt(probe['latency_ms'].get('p99'), 0)} ms"
        )
        if len(probe.get("levels", ())) > 1:
            lines.append(
                "- probe levels (clients: decided/s, p50 ms): "
                + ", ".join(
                    f"{lv['clients']}: {lv['capacity_per_s']:g}, "
                    f"{_fmt(lv['latency_ms'].get('p50'), 0)}"
                    for lv in probe["levels"]
                )
            )
    if report.get("error"):
        lines.append(f"- **run failed**: {report['error'].splitlines()[-1]}")
    lines += ["", HEADER, *(_row(f) for f in report["steps"])]
    lines += ["", DETAIL_HEADER, *(_detail_row(f) for f in report["steps"])]
    if report.get("samples"):
        lines += [
            "",
            "| t s | worker RSS MB | worker CPU % | broker CPU % | pg CPU % | generator CPU % "
            "| in flight | table entries | housekeeping ms per round since the last sample | retired |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        before: dict[str, float] = {}
        for s in report["samples"]:
            now = _metric_values(s["metrics"])
            entries = {k.split('table="')[1].rstrip('"}'): int(v) for k, v in now.items()
                       if k.startswith("orion_table_entries{")}
            rounds = {}
            for agent in sorted({k.split('agent="')[1].split('"')[0] for k in now
                                 if k.startswith("orion_housekeeping_seconds_count{")}):
                count, total = (f'orion_housekeeping_seconds_{x}{{agent="{agent}"}}' for x in ("count", "sum"))
                n = now[count] - before.get(count, 0.0)
                if n:
                    rounds[agent] = round((now[total] - before.get(total, 0.0)) / n * 1000, 1)
            retired = sum(v for k, v in now.items() if k.startswith("orion_state_retired_total"))
            before = now
            lines.append(
                f"| {s['t_s']:.0f} | {s['worker_rss_mb']} | {s['worker_cpu_pct']} "
                f"| {_fmt(s['broker_cpu_pct'])} | {_fmt(s['postgres_cpu_pct'])} "
                f"| {_fmt(s['generator_cpu_pct'])} | {s['in_flight']} | {entries} | {rounds} | {retired:.0f} |"
            )
        summary = report["soak_summary"]
        lines += ["", f"soak summary: {json.dumps(summary)}"]
    return "\n".join(lines) + "\n"


def _metric_values(metrics: dict[str, list[str]]) -> dict[str, float]:
    """The sampled metric lines of every worker, summed per series."""
    values: dict[str, float] = {}
    for lines in metrics.values():
        for line in lines:
            series, _, value = line.rpartition(" ")
            values[series] = values.get(series, 0.0) + float(value)
    return values


def _write(report: dict[str, Any], bench: Bench | None, cfg: Config) -> Path:
    out_dir = Path(cfg.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = "-".join(p for p in (cfg.scenario, cfg.mode, cfg.label, stamp) if p)
    base = out_dir / name
    Path(f"{base}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    Path(f"{base}.md").write_text(_markdown(report))
    if cfg.raw and bench is not None and bench.all_requests:
        with gzip.open(f"{base}.requests.csv.gz", "wt", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(
                [
                    "phase",
                    "idx",
                    "intended_unix",
                    "sent_unix",
                    "answered_unix",
                    "status",
                    "order_id",
                    "card",
                    "retry_after",
                    "error",
                    "worker",
                    "customer",
                ]
            )
            for phase, r in bench.all_requests:
                w.writerow(
                    [
                        phase,
                        r.idx,
                        f"{bench.wall(r.intended):.6f}",
                        "" if r.sent is None else f"{bench.wall(r.sent):.6f}",
                        "" if r.answered is None else f"{bench.wall(r.answered):.6f}",
                        r.status,
                        r.order_id,
                        r.card,
                        r.retry_after,
                        r.error,
                        r.worker,
                        r.customer,
                    ]
                )
    return base


# ---------------------------------------------------------------- main


def _parse(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scenario", choices=("overload", "soak"), default="overload")
    p.add_argument(
        "--mode",
        choices=("http", "kafka"),
        default="http",
        help="POST /v1/orders, or OrderPlaced straight into the orders topic",
    )
    p.add_argument("--label", help="goes into the file name and the JSON")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--payment-timeout",
        type=float,
        default=10.0,
        help="ORION_PAYMENT_TIMEOUT of the workers (default 10, as in production)",
    )
    p.add_argument(
        "--mailer",
        action="store_true",
        help="also run a mail catcher and one mailer (default: emails only queued)",
    )
    p.add_argument("--no-mailer", dest="mailer", action="store_false", help="the default")
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the workers (repeatable)",
    )
    p.add_argument("--capacity", type=float, help="decided orders/s; skips the probe")
    p.add_argument(
        "--probe-clients",
        default="16,32,64",
        help="closed-loop clients of the probe; a list (8,32,64) probes each, best one wins",
    )
    p.add_argument(
        "--probe-method",
        choices=("poll", "wait"),
        default="poll",
        help="how a probe client learns its order is decided: the bench polls PostgreSQL "
        "(one batched query) or POST ?wait= holds the request",
    )
    p.add_argument(
        "--probe-wait", type=float, default=30.0, help="seconds a probe client waits for a decision"
    )
    p.add_argument(
        "--warmup-seconds",
        type=float,
        default=10.0,
        help="closed-loop orders before anything is measured (0: none)",
    )
    p.add_argument("--probe-seconds", type=float, default=30.0)
    p.add_argument("--steps", default="1,2,5", help="multiples of the capacity, in order")
    p.add_argument("--step-seconds", type=float, default=60.0)
    p.add_argument("--drain-timeout", type=float, default=900.0)
    p.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    p.add_argument("--customers", type=int, default=2000)
    p.add_argument(
        "--declined-share",
        type=float,
        default=0.1,
        help="share of orders paid with tok_declined (the rest tok_ok)",
    )
    p.add_argument("--stock", type=int, default=1_000_000, help="units restocked per SKU")
    p.add_argument("--request-timeout", type=float, default=30.0)
    p.add_argument("--connection-limit", type=int, default=1000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate", type=float, help="soak: offered orders/s")
    p.add_argument(
        "--fraction",
        type=float,
        default=0.5,
        help="soak: offered rate as a share of the capacity, unless --rate",
    )
    p.add_argument("--duration", type=float, default=1200.0, help="soak: seconds of load")
    p.add_argument("--sample-interval", type=float, default=30.0, help="soak: seconds")
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=60.0,
        help="soak: idle CPU measured this long before and after the load",
    )
    p.add_argument(
        "--fulfil-after",
        type=float,
        default=30.0,
        help="soak: fulfil each CONFIRMED order this many seconds after its confirmation, as a "
        "warehouse would (a confirmed order holds its stock and its saga until then); 0: never",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="soak: after the load, keep shipping and sampling this long before the idle "
        "measurement (e.g. fulfil-after + ORION_ORDER_RETENTION + a margin, so the last orders "
        "are retired and the idle figure is the worker at rest)",
    )
    p.add_argument(
        "--metric-prefixes",
        default=DEFAULT_METRIC_PREFIXES,
        help="/metrics lines starting with these (comma-separated) are kept",
    )
    p.add_argument("--results-dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument(
        "--raw", action="store_true", help="also write every request as <name>.requests.csv.gz"
    )
    a = p.parse_args(argv)
    worker_env: dict[str, str] = {}
    for item in a.worker_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--worker-env wants KEY=VALUE, not {item!r}")
        worker_env[key] = value
    return Config(
        scenario=a.scenario,
        mode=a.mode,
        label=a.label,
        workers=a.workers,
        partitions=a.partitions,
        payment_timeout=a.payment_timeout,
        mailer=a.mailer,
        worker_env=worker_env,
        capacity=a.capacity,
        probe_clients=[int(n) for n in a.probe_clients.split(",") if n],
        probe_method=a.probe_method,
        probe_wait=a.probe_wait,
        warmup_seconds=a.warmup_seconds,
        probe_seconds=a.probe_seconds,
        steps=[float(s) for s in a.steps.split(",") if s],
        step_seconds=a.step_seconds,
        drain_timeout=a.drain_timeout,
        arrivals=a.arrivals,
        customers=a.customers,
        declined_share=a.declined_share,
        stock=a.stock,
        request_timeout=a.request_timeout,
        connection_limit=a.connection_limit,
        seed=a.seed,
        rate=a.rate,
        fraction=a.fraction,
        duration=a.duration,
        sample_interval=a.sample_interval,
        idle_seconds=a.idle_seconds,
        fulfil_after=a.fulfil_after,
        settle=a.settle,
        metric_prefixes=[s for s in a.metric_prefixes.split(",") if s],
        results_dir=a.results_dir,
        raw=a.raw,
    )


async def _measure(bench: Bench, report: dict[str, Any]) -> None:
    cfg = bench.cfg
    connector = aiohttp.TCPConnector(limit=cfg.connection_limit, limit_per_host=0)
    bench.session = aiohttp.ClientSession(connector=connector)
    bench.engine = create_async_engine(bench.services.database_url, pool_size=2)
    bench.rss.start()
    try:
        if cfg.scenario == "overload":
            await scenario_overload(bench, report)
        else:
            await scenario_soak(bench, report)
    finally:
        bench.rss.done.set()
        await bench.session.close()
        await bench.engine.dispose()


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # so a SIGTERM stops every process this run started


def main(argv: Sequence[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _interrupted)
    cfg = _parse(argv)
    started = time.monotonic()
    report: dict[str, Any] = {
        "config": asdict(cfg),
        "code": _code_under_test(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
        "steps": [],
    }
    bench: Bench | None = None
    try:
        with (
            tempfile.TemporaryDirectory(prefix="orion-overload-") as tmp,
            running_services(
                Path(tmp), partitions=cfg.partitions, payment_timeout=cfg.payment_timeout
            ) as services,
        ):
            root = Path(tmp)
            env = {"ORION_LOG_LEVEL": "warn", **cfg.worker_env}
            mail: MailCatcher | None = None
            workers: list[Worker] = []
            mailer: Mailer | None = None
            try:
                # Every process started is stopped in `finally`, even if a later one fails.
                if cfg.mailer:
                    mail = MailCatcher(root / "mail", port=free_port())
                    mail.start()
                    env["ORION_SMTP_URL"] = f"smtp://{mail.host}:{mail.port}"
                for i in range(cfg.workers):
                    workers.append(Worker(services, f"w{i}", env).start())
                if cfg.mailer:
                    mailer = Mailer(services, "m0", env).start()
                pids = Pids(
                    workers={w.name: w.proc.pid for w in workers if w.proc is not None},
                    broker=_broker_pid(root),
                    postgres=services.postgres.pid if services.postgres is not None else None,
                )
                report["pids"] = asdict(pids)
                report["workers_code"] = {w.name: _worker_code(w) for w in workers}
                bench = Bench(
                    cfg,
                    services,
                    workers,
                    pids,
                    RssSampler(pids.workers),
                    Orders(services, cfg.customers, cfg.declined_share, cfg.seed),
                )
                print(f"[{_now()}] stack up: {len(workers)} worker(s)", file=sys.stderr, flush=True)
                asyncio.run(_measure(bench, report))
            finally:
                for w in workers:
                    w.stop()
                if mailer is not None:
                    mailer.stop()
                if mail is not None:
                    mail.stop()
    except BaseException as exc:
        report["error"] = "".join(traceback.format_exception(exc))
        raise
    finally:
        report["total_seconds"] = round(time.monotonic() - started, 1)
        base = _write(report, bench, cfg)
        print(f"\n{HEADER}\n" + "\n".join(_row(f) for f in report["steps"]))
        print(f"\ncapacity {report.get('capacity_per_s')}/s; wrote {base}.json and {base}.md")


if __name__ == "__main__":
    main()
