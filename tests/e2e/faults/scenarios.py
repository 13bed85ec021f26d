"""The fault scenarios: load from outside, faults on a schedule, a drain, the checker.

Each scenario takes a fresh cluster and a `Scale` (quick for `make test`, full for
`make test-faults`) and returns the checker's verdict.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import text

from orion_streams import topics
from orion_streams.adapters.postgres import SqlAlchemyStore
from orion_streams.agents.common import partition_for

from ...integration.harness import TEST_PRODUCTS, eventually, read_topic
from .checker import DECIDED, Verdict, check, lag, wait_decided, wait_emails
from .cluster import Cluster, cluster
from .history import OK, History, HttpClients, KafkaClient, Lines


@dataclass(frozen=True)
class Scale:
    name: str
    seconds: float  # of load
    rate: float  # orders offered per second
    workers: int
    kill_every: tuple[float, float]
    flash_units: int
    flash_buyers: int
    drain: float  # seconds allowed for every order to be decided


QUICK = Scale(
    "quick",
    seconds=30,
    rate=5,
    workers=2,
    kill_every=(10, 18),
    flash_units=30,
    flash_buyers=200,
    drain=120,
)
FULL = Scale(
    "full",
    seconds=120,
    rate=12,
    workers=2,
    kill_every=(10, 30),
    flash_units=100,
    flash_buyers=2000,
    drain=300,
)

SKUS = [p.sku for p in TEST_PRODUCTS[:20]]
UNITS = 100_000  # per SKU: orders are decided on their cards, not on scarcity


def _probe_skus(partitions: int) -> list[str]:
    """One SKU owned by each stock partition, for the takeover probes."""
    out = []
    for p in range(partitions):
        out.append(next(s.sku for s in TEST_PRODUCTS[20:] if partition_for(s.sku, partitions) == p))
    return out


def _order_id_on(partition: int, partitions: int) -> str:
    while True:
        order_id = f"probe-{uuid.uuid4().hex}"
        if partition_for(order_id, partitions) == partition:
            return order_id


class Run:
    """One scenario's clients and helpers."""

    def __init__(self, c: Cluster, history: History, scale: Scale, seed: int = 7) -> None:
        self.c = c
        self.h = history
        self.scale = scale
        self.rng = random.Random(seed)
        self.admin = c.services.token("mike", ("admin",))
        self.stocked: dict[str, int] = {}
        self._tokens: dict[str, str] = {}
        self.http = HttpClients(history, c.urls, self.token)
        self.kafka = KafkaClient(history, c.services.bootstrap)
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[object]] = set()
        self.takeovers: list[float] = []
        self.held_rebalance: list[str] = []

    def token(self, user: str) -> str:
        if user not in self._tokens:
            self._tokens[user] = self.c.services.token(user)
        return self._tokens[user]

    async def __aenter__(self) -> Run:
        self.session = aiohttp.ClientSession()
        await self.kafka.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.kafka.stop()
        if self.session is not None:
            await self.session.close()

    async def restock(self, units: dict[str, int]) -> None:
        assert self.session is not None
        url = self.c.urls()[0]
        for sku, n in units.items():
            async with self.session.post(
                f"{url}/v1/inventory/{sku}/adjustments",
                json={"delta": n, "reason": "restock"},
                headers={"Authorization": f"Bearer {self.admin}"},
            ) as resp:
                assert resp.status == 200, await resp.text()
            self.stocked[sku] = self.stocked.get(sku, 0) + n

    def _order(self) -> tuple[str, Lines, str]:
        user = f"u{self.rng.randrange(200)}"
        skus = self.rng.sample(SKUS, self.rng.choice((1, 1, 2)))
        card = "tok_declined" if self.rng.random() < 0.1 else "tok_ok"
        return user, tuple((s, self.rng.randint(1, 2)) for s in skus), card

    def place(self, via: str | None = None) -> asyncio.Task[object]:
        user, lines, card = self._order()
        via = via or self.rng.choice(("http", "kafka"))
        assert self.session is not None
        then = self.rng.choices(("", "cancel", "fulfil"), (90, 5, 5))[0]
        coro: Awaitable[object] = (
            self._http_order(user, lines, card, then)
            if via == "http"
            else self.kafka.place(user, lines, card)
        )
        task: asyncio.Task[object] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _http_order(self, user: str, lines: Lines, card: str, then: str) -> None:
        """An order through HTTP; now and then its customer cancels it (a void or refund if it
        was paid) or the warehouse ships it, shortly after."""
        assert self.session is not None
        op = await self.http.place(self.session, user, lines, card)
        if op.outcome != OK or not then:
            return
        await asyncio.sleep(self.rng.uniform(0, 3))  # the customer changes their mind
        token = self.token(user) if then == "cancel" else self.admin
        for _ in range(5):
            urls = await self._workers_up()
            if not urls:
                continue
            try:
                async with self.session.post(
                    f"{self.rng.choice(urls)}/v1/orders/{op.order_id}/{then}",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as resp:
                    op.answers.append(f"{then} {resp.status}")
                    if resp.status < 500:
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                op.answers.append(f"{then} {type(exc).__name__}")
            await asyncio.sleep(1)  # then try again

    async def _workers_up(self, timeout: float = 30) -> list[str]:
        """The URLs of the workers that are up, once there is one (or none after `timeout`)."""

        async def up() -> list[str]:
            return self.c.urls()

        try:
            urls: list[str] = await eventually(up, timeout, "a worker to be up", interval=0.2)
        except AssertionError:
            return []
        return urls

    async def load(self, seconds: float, rate: float | None = None) -> None:
        """Open loop: orders at `rate`/s (Poisson), each its own task, for `seconds`."""
        rate = rate or self.scale.rate
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.place()
            await asyncio.sleep(self.rng.expovariate(rate))  # the arrival schedule
        await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def takeover(self, timeout: float = 120) -> float:
        """Seconds until every partition serves again: a probe order on each saga and stock
        partition, produced now, decided."""
        parts = self.c.services.partitions
        started = time.monotonic()
        ids = []
        for p, sku in enumerate(_probe_skus(parts)):
            op = await self.kafka.place(
                "prober", ((sku, 1),), "tok_ok", order_id=_order_id_on(p, parts)
            )
            ids.append(op.order_id)
        store = SqlAlchemyStore(self.c.services.database_url, pool_size=1)
        try:
            while time.monotonic() - started < timeout:
                async with store.engine.connect() as conn:
                    rows = (
                        (
                            await conn.execute(
                                text("select status from orders where order_id = any(:ids)"),
                                {"ids": ids},
                            )
                        )
                        .scalars()
                        .all()
                    )
                if len(rows) == len(ids) and all(s in DECIDED for s in rows):
                    self.takeovers.append(time.monotonic() - started)
                    return self.takeovers[-1]
                await asyncio.sleep(0.2)  # poll until the deadline
        finally:
            await store.close()
        self.takeovers.append(float("inf"))
        return float("inf")

    async def finish(self, scenario: str, **kw: object) -> Verdict:
        """Drain (every order decided, emails caught up), then judge."""
        await wait_decided(self.c.services, self.h, self.scale.drain)
        await wait_emails(self.c.services, 60)
        v = await check(scenario, self.c.services, self.h, self.c.mail, self.stocked, **kw)  # type: ignore[arg-type]
        v.stuck += [
            f"a partition served nothing for {t:.0f} s after a fault"
            for t in self.takeovers
            if t > 120
        ]
        return v


async def _standard_stock(run: Run) -> None:
    await run.restock(
        {**{s: UNITS for s in SKUS}, **{s: UNITS for s in _probe_skus(run.c.services.partitions)}}
    )


# --- the scenarios -----------------------------------------------------------------------------


async def kill_workers(c: Cluster, h: History, scale: Scale) -> Verdict:
    """(1) kill -9 a random worker every 10-30 s under load, and start it again."""
    async with Run(c, h, scale) as run:
        await _standard_stock(run)
        until = time.monotonic() + scale.seconds
        takeovers: list[float] = []

        async def faults() -> None:
            while True:
                wait = run.rng.uniform(*scale.kill_every)
                if time.monotonic() + wait >= until:
                    return
                await asyncio.sleep(wait)  # the fault schedule
                victims = c.up()
                victim = run.rng.choice(victims)
                c.kill(victim)
                restart = asyncio.ensure_future(asyncio.to_thread(c.start_worker, victim.name))
                takeovers.append(await run.takeover())
                await restart

        await asyncio.gather(run.load(scale.seconds), faults())
        v = await run.finish("1 kill -9 a worker, restart")
        v.takeover_s = max(takeovers) if takeovers else None
        v.notes.append(f"{len(takeovers)} kills, takeovers {[round(t, 1) for t in takeovers]} s")
        return v


async def pause_worker(c: Cluster, h: History, scale: Scale) -> Verdict:
    """(2) SIGSTOP a worker for 20 s, past the session timeout, then SIGCONT: the zombie
    must not apply anything twice."""
    async with Run(c, h, scale) as run:
        await _standard_stock(run)

        async def faults() -> float:
            await asyncio.sleep(scale.seconds / 4)  # the fault schedule
            victim = c.up()[-1]
            c.pause(victim)
            took = await run.takeover()
            await asyncio.sleep(max(0.0, 20 - took))  # well past the 10 s session timeout
            c.resume(victim)
            return took

        _, took = await asyncio.gather(run.load(scale.seconds), faults())
        v = await run.finish("2 SIGSTOP a worker 20 s, SIGCONT")
        v.takeover_s = took
        return v


async def scale_out_and_in(c: Cluster, h: History, scale: Scale) -> Verdict:
    """(3) 1 -> 3 -> 1 workers under load (graceful stops)."""
    async with Run(c, h, scale) as run:
        await _standard_stock(run)

        async def faults() -> float:
            await asyncio.sleep(scale.seconds / 5)  # the fault schedule
            added = [await asyncio.to_thread(c.start_worker) for _ in range(2)]
            await asyncio.sleep(scale.seconds / 5)  # the fault schedule
            for w in added:
                await asyncio.to_thread(c.remove, w)
                # A stopping worker acknowledges what it handled; once its consumer waited
                # for such events until it was killed, holding the group's rebalance 30 s.
                log = w.log_path.read_text(errors="replace")
                stopping = log.split("[^Worker]: Stopping...", 1)
                if len(stopping) == 2 and "wait_empty: Waiting for tasks" in stopping[1]:
                    run.held_rebalance.append(w.name)
            return await run.takeover()  # every partition served by the one left

        _, took = await asyncio.gather(run.load(scale.seconds), faults())
        v = await run.finish("3 scale 1 -> 3 -> 1")
        v.takeover_s = took
        v.stuck += [
            f"{name} stopped with events handled but not acknowledged"
            for name in run.held_rebalance
        ]
        return v


async def replay(c: Cluster, h: History, scale: Scale) -> Verdict:
    """(7) every consumer offset reset to the earliest: a full replay changes nothing."""
    async with Run(c, h, scale) as run:
        await _standard_stock(run)
        await run.load(scale.seconds / 2)
        await wait_decided(c.services, h, scale.drain)
        await wait_emails(c.services, 60)
        before = await _snapshot(c)
        for w in list(c.workers.values()):
            await asyncio.to_thread(c.remove, w)
        await c.reset_group_to_earliest()
        behind = await lag(c.services)
        assert behind > 0, "the reset moved no offset: nothing would be replayed"
        started = time.monotonic()
        await asyncio.to_thread(c.start_worker)
        deadline = time.monotonic() + scale.drain
        while time.monotonic() < deadline:
            if await lag(c.services) == 0:
                break
            await asyncio.sleep(0.5)  # poll until the replay is consumed
        replayed = time.monotonic() - started
        await wait_emails(c.services, 30)
        after = await _snapshot(c)
        v = await run.finish("7 consumer group reset to earliest")
        v.mismatched += [
            f"after the replay {k}: {before[k]} -> {after.get(k)}"
            for k in before
            if before[k] != after.get(k)
        ]
        v.mismatched += [
            f"after the replay {k} appeared: {after[k]}" for k in after if k not in before
        ]
        v.notes.append(f"{behind} records replayed in {replayed:.1f} s")
        return v


async def poison(c: Cluster, h: History, scale: Scale) -> Verdict:
    """(8) poison records among good ones, on every topic a producer can reach."""
    async with Run(c, h, scale) as run:
        await _standard_stock(run)
        poisons = [
            b"not json",
            b"{",
            b"[]",
            json.dumps({"type": "NoSuchThing"}).encode(),
            json.dumps({"type": "OrderPlaced", "order_id": "x"}).encode(),
            b"\xff\xfe\x00",
            json.dumps(
                {"type": "LineReserved", "order_id": "nobody", "sku": SKUS[0], "quantity": 1}
            ).encode(),
            json.dumps(
                {"type": "ReserveLine", "order_id": "nobody", "sku": SKUS[0], "quantity": -5}
            ).encode(),
            b"x" * 200_000,
        ]
        topics_ = [spec.name for spec in topics.PIPELINE if spec is not topics.DEAD_LETTERS]
        sent: dict[tuple[str, int, int], bytes] = {}
        producer = run.kafka.producer
        assert producer is not None

        async def faults() -> None:
            for i in range(3):
                await asyncio.sleep(scale.seconds / 4)  # the fault schedule
                for topic in topics_:
                    for n, body in enumerate(poisons):
                        key = (
                            SKUS[0]
                            if topic in ("stock-requests", "stock-levels")
                            else f"poison-{i}-{n}"
                        )
                        md = await producer.send_and_wait(topic, body, key=key.encode())
                        sent[(md.topic, md.partition, md.offset)] = body

        await asyncio.gather(run.load(scale.seconds), faults())
        v = await run.finish("8 poison records")
        parked = set()
        for rec in await read_topic(c.services.bootstrap, "dead-letters"):
            body = json.loads(rec.value)
            parked.add((body.get("source_topic"), body.get("partition"), body.get("offset")))
        unparked = Counter(
            f"{t}: {sent[(t, p, o)][:60]!r}" for t, p, o in sent if (t, p, o) not in parked
        )
        v.notes.append(
            f"{len(sent)} poison records, {len(sent) - sum(unparked.values())} on dead-letters; "
            f"not: {dict(unparked)}"
        )
        v.stuck += [f"poison never dead-lettered: {k} x{n}" for k, n in unparked.items()]
        return v


async def flash_sale(c: Cluster, h: History, scale: Scale) -> Verdict:
    """(9) few units, many buyers, each submitting twice, a worker killed mid-burst:
    exactly the units are sold."""
    async with Run(c, h, scale) as run:
        sku = SKUS[-1]
        await run.restock({sku: scale.flash_units})
        assert run.session is not None
        buyers = [f"buyer{i}" for i in range(scale.flash_buyers)]

        session = run.session

        async def buy(user: str) -> None:
            key = f"flash-{user}"  # a double click: the same request twice at once
            await asyncio.gather(
                *(run.http.place(session, user, ((sku, 1),), "tok_ok", key=key) for _ in range(2))
            )

        a_third_in = asyncio.Event()

        async def burst() -> None:
            tasks = []
            for n, user in enumerate(buyers):
                tasks.append(asyncio.ensure_future(buy(user)))
                if n == len(buyers) // 3:
                    a_third_in.set()
                await asyncio.sleep(run.rng.expovariate(scale.rate * 8))  # the arrival schedule
            await asyncio.gather(*tasks)

        async def faults() -> None:
            await a_third_in.wait()  # a third of the buyers have come
            c.kill(run.rng.choice(c.up()))

        await asyncio.gather(burst(), faults())
        v = await run.finish("9 flash sale, a worker killed")
        store = SqlAlchemyStore(c.services.database_url, pool_size=1)
        try:
            async with store.engine.connect() as conn:
                sold = (
                    await conn.execute(
                        text(
                            "select coalesce(sum(l.quantity), 0) from order_lines l join orders o using (order_id) "
                            "where l.sku = :sku and o.status in ('CONFIRMED', 'FULFILLED')"
                        ),
                        {"sku": sku},
                    )
                ).scalar_one()
        finally:
            await store.close()
        buyers_ok = len({op.user for op in h.by(OK)})
        expected = min(scale.flash_units, buyers_ok)
        v.notes.append(
            f"{sold} of {scale.flash_units} units sold to {buyers_ok} buyers with an order"
        )
        if sold != expected:
            v.oversold.append(
                f"{sku}: {sold} sold, expected exactly {expected}"
            ) if sold > expected else v.stuck.append(f"{sku}: only {sold} sold of {expected}")
        return v


async def _outage(
    c: Cluster,
    h: History,
    scale: Scale,
    what: str,
    stop: Callable[[], None],
    start: Callable[[], None],
    down: float,
) -> Verdict:
    """Load; a quarter in, `stop`; `down` seconds later, `start`; drain and judge."""
    async with Run(c, h, scale) as run:
        await _standard_stock(run)
        window: list[float] = []

        async def faults() -> None:
            await asyncio.sleep(scale.seconds / 4)  # the fault schedule
            window.append(time.monotonic())
            await asyncio.to_thread(stop)
            h.note(f"{what} down")
            await asyncio.sleep(down)  # the outage
            await asyncio.to_thread(start)
            window.append(time.monotonic())
            h.note(f"{what} up")

        await asyncio.gather(run.load(scale.seconds), faults())
        v = await run.finish(f"{what} down {down:.0f} s")
        during = [op for op in h.ops if op.via == "http" and window[0] <= op.started <= window[1]]
        answers = Counter(a for op in during for a in op.answers)
        v.notes.append(f"HTTP answers while {what} was down: {dict(answers)}")
        return v


async def broker_outage(c: Cluster, h: History, scale: Scale) -> Verdict:
    """(4) the broker stopped and started again under load: HTTP refuses with 503
    meanwhile, nothing acknowledged is lost."""
    broker = c.services.broker
    assert broker is not None
    v = await _outage(c, h, scale, "4 Kafka broker", broker.stop, broker.start, 15)
    return v


async def database_outage(c: Cluster, h: History, scale: Scale) -> Verdict:
    """(5) PostgreSQL stopped and started again under load."""
    pg = c.services.postgres
    assert pg is not None
    return await _outage(c, h, scale, "5 PostgreSQL", pg.stop, pg.start, 15)


async def smtp_outage(c: Cluster, h: History, scale: Scale) -> Verdict:
    """(6) the SMTP server away for a while: emails are delayed, not lost."""
    return await _outage(c, h, scale, "6 SMTP", c.mail.stop, c.mail.start, 20)


async def _snapshot(c: Cluster) -> dict[str, object]:
    """What a replay must not change: every order's status, stock, emails queued and sent."""
    store = SqlAlchemyStore(c.services.database_url, pool_size=1)
    try:
        async with store.engine.connect() as conn:
            out: dict[str, object] = {}
            for order_id, status, version in (
                await conn.execute(text("select order_id, status, version from orders"))
            ).all():
                out[f"order {order_id}"] = (status, version)
            for sku, on_hand, reserved in (
                await conn.execute(text("select sku, on_hand, reserved from stock_levels"))
            ).all():
                out[f"stock {sku}"] = (on_hand, reserved)
            out["emails"] = (
                await conn.execute(text("select count(*) from notifications"))
            ).scalar_one()
            trail: dict[str, list[str]] = {}
            for order_id, seq, kind in (
                await conn.execute(
                    text("select order_id, seq, type from order_events order by order_id, seq")
                )
            ).all():
                trail.setdefault(f"audit {order_id}", []).append(f"{seq} {kind}")
            out.update(trail)
    finally:
        await store.close()
    out["emails delivered"] = len(list(c.mail.messages))
    return out


Scenario = Callable[[Cluster, History, Scale], Coroutine[Any, Any, Verdict]]
SCENARIOS: dict[str, tuple[Scenario, int]] = {
    # name: (scenario, workers at the start)
    "kill": (kill_workers, 2),
    "pause": (pause_worker, 2),
    "scale": (scale_out_and_in, 1),
    "broker": (broker_outage, 2),
    "database": (database_outage, 2),
    "smtp": (smtp_outage, 1),
    "replay": (replay, 1),
    "poison": (poison, 1),
    "flash": (flash_sale, 2),
}


def run_scenario(name: str, root: Path, scale: Scale) -> tuple[Verdict, History, str]:
    """A fresh cluster, the scenario on its own event loop, the verdict; all stopped after."""
    scenario, workers = SCENARIOS[name]
    history = History()
    with cluster(root, history, workers=workers) as c:
        verdict = asyncio.run(scenario(c, history, scale))
        return verdict, history, c.logs()
