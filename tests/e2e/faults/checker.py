"""Judge a fault run from the outside: the client history against what Orion left behind
in PostgreSQL, its tables' changelogs, the published stock levels, dead letters and emails.

Invariants (each violation is listed with the order or SKU it concerns):
- every acknowledged order exists exactly once in PostgreSQL and is decided (lost, stuck);
- no request refused at the door created an order;
- no order was placed twice (two orders for one key, two OrderPlaced for one order);
- per SKU, units sold and held <= units stocked, and available >= 0 in every published level
  and in PostgreSQL (oversold);
- PostgreSQL's stock equals the inventory table's; each order's status equals its saga's;
- each decided order has exactly one email per stage (missing; duplicates counted);
- nothing is left undecided without a dead-letter record naming it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from orion_devstack.smtp import MailCatcher
from orion_streams.adapters.postgres import SqlAlchemyStore

from ...integration.harness import Services, group_lag, read_messages, read_topic, table_values
from .history import OK, REFUSED, History

DECIDED = {"CONFIRMED", "FULFILLED", "REJECTED", "PAYMENT_FAILED", "CANCELLED"}
# The email each status sends (see README "Emails"); PENDING's order_received comes first.
STAGE_EMAIL = {
    "CONFIRMED": "order_processing",
    "FULFILLED": "order_fulfilled",
    "REJECTED": "order_failed",
    "PAYMENT_FAILED": "order_failed",
    "CANCELLED": "order_cancelled",
}


@dataclass
class Verdict:
    scenario: str
    acknowledged: int = 0
    refused: int = 0
    unknown: int = 0
    in_postgres: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    oversold: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    refused_but_created: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    emails_missing: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    voids_missing: list[str] = field(default_factory=list)
    emails_duplicated: int = 0
    dead_letters: int = 0
    takeover_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> dict[str, list[str]]:
        return {
            k: v
            for k, v in {
                "lost": self.lost,
                "duplicated": self.duplicated,
                "oversold": self.oversold,
                "stuck": self.stuck,
                "refused but created": self.refused_but_created,
                "PostgreSQL differs from the tables": self.mismatched,
                "emails missing": self.emails_missing,
                "HTTP 5xx other than 503": self.server_errors,
                "authorised, failed and never voided": self.voids_missing,
            }.items()
            if v
        }

    def row(self) -> list[str]:
        take = "-" if self.takeover_s is None else f"{self.takeover_s:.1f} s"
        return [
            self.scenario,
            str(self.acknowledged),
            str(self.in_postgres),
            str(len(self.lost)),
            str(len(self.duplicated)),
            str(len(self.oversold)),
            str(len(self.stuck)),
            str(len(self.emails_missing)),
            take,
        ]

    def explain(self) -> str:
        return "; ".join(f"{k}: {len(v)} e.g. {v[:5]}" for k, v in self.failures.items()) or "ok"


HEADER = [
    "scenario",
    "orders acknowledged",
    "in PostgreSQL",
    "lost",
    "duplicated",
    "oversold",
    "stuck",
    "emails missing",
    "takeover",
]


def table(verdicts: list[Verdict]) -> str:
    rows = [HEADER, ["---"] * len(HEADER), *(v.row() for v in verdicts)]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


async def _orders(store: SqlAlchemyStore) -> dict[str, dict[str, Any]]:
    async with store.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("select order_id, user_id, status, idempotency_key from orders")
            )
        ).mappings()
        return {r["order_id"]: dict(r) for r in rows}


async def _scalar_map(store: SqlAlchemyStore, sql: str) -> dict[Any, Any]:
    async with store.engine.connect() as conn:
        return {
            tuple(r[:-1]) if len(r) > 2 else r[0]: r[-1]
            for r in (await conn.execute(text(sql))).all()
        }


async def wait_decided(services: Services, history: History, timeout: float) -> float:
    """The drain: wait until every order that may exist is decided (unknown ones included
    when they exist) and the agents and the projection have consumed everything, or the
    deadline passes; returns the seconds it took."""
    started = time.monotonic()
    store = SqlAlchemyStore(services.database_url, pool_size=1)
    try:
        while True:
            orders = await _orders(store)
            open_ = [o for o, r in orders.items() if r["status"] not in DECIDED]
            missing = [op for op in history.by(OK) if op.order_id not in orders]
            # Decided is not settled: what follows a decision (a void's answer, released
            # lines in the audit trail) is still on its way until every group has read all.
            if not open_ and not missing and await lag(services) == 0:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                return time.monotonic() - started
            await asyncio.sleep(0.5)  # poll PostgreSQL until the deadline
    finally:
        await store.close()


async def wait_emails(services: Services, timeout: float) -> None:
    """Until no email is queued or being retried (the mailer caught up), or the deadline."""
    store = SqlAlchemyStore(services.database_url, pool_size=1)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            queued = await _scalar_map(
                store, "select 1, count(*) from notifications where status = 'queued'"
            )
            if not queued.get(1):
                return
            await asyncio.sleep(0.5)  # poll PostgreSQL until the deadline
    finally:
        await store.close()


async def _stock_levels(services: Services) -> list[dict[str, Any]]:
    return [
        m for m in await read_messages(services.bootstrap, "stock-levels")
        if isinstance(m, dict) and m.get("type") == "StockLevelChanged"
    ]


async def _dead_letter_ids(services: Services) -> set[str]:
    ids = set()
    for rec in await read_topic(services.bootstrap, "dead-letters"):
        try:
            body = json.loads(rec.value)
        except (TypeError, ValueError):
            continue
        for k in ("order_id", "key"):
            if isinstance(body, dict) and isinstance(body.get(k), str):
                ids.add(body[k])
        if rec.key:
            ids.add(rec.key.decode(errors="replace"))
    return ids


async def lag(services: Services) -> int:
    """Unconsumed records of Orion's group over all source topics."""
    return sum((await group_lag(services)).values())


async def check(
    scenario: str,
    services: Services,
    history: History,
    mail: MailCatcher | None,
    stocked: dict[str, int],
    *,
    emails: bool = True,
) -> Verdict:
    """Everything the run left behind against the history; `stocked`: units put on each SKU."""
    v = Verdict(scenario)
    ok = history.by(OK)
    v.acknowledged, v.refused = len({op.order_id for op in ok}), len(history.by(REFUSED))
    v.unknown = sum(op.outcome not in (OK, REFUSED) for op in history.ops)
    # a fault is answered with 503 and Retry-After, never with an error of the server's own
    v.server_errors = [
        f"{op.key}: {op.answers}"
        for op in history.ops
        if any(
            a.split()[-1].isdigit() and int(a.split()[-1]) >= 500 and a.split()[-1] != "503"
            for a in op.answers
            if a
        )
    ]
    store = SqlAlchemyStore(services.database_url, pool_size=2)
    try:
        orders = await _orders(store)
        placed = await _scalar_map(
            store,
            "select order_id, count(*) from order_events where type = 'OrderPlaced' "
            "group by order_id",
        )
        lines = await _scalar_map(
            store,
            "select o.status, l.sku, sum(l.quantity) from order_lines l "
            "join orders o using (order_id) group by o.status, l.sku",
        )
        pg_stock = {
            r[0]: (r[1], r[2])
            for r in (await _rows(store, "select sku, on_hand, reserved from stock_levels"))
        }
        notes = await _rows(
            store, "select order_id, template, status from notifications where order_id is not null"
        )
        trail = await _rows(
            store,
            "select order_id, type from order_events where type in "
            "('PaymentAuthorized', 'PaymentVoided', 'PaymentRefunded', 'PaymentVoidFailed')",
        )
    finally:
        await store.close()
    dead = await _dead_letter_ids(services)

    # acknowledged orders: there, once, decided
    keys: dict[tuple[str, str], set[str]] = defaultdict(set)
    for op in ok:
        assert op.order_id is not None
        keys[(op.user, op.key)].add(op.order_id)
        if op.order_id not in orders and op.order_id not in v.lost:
            v.lost.append(op.order_id)
    v.in_postgres = len({op.order_id for op in ok if op.order_id in orders})
    v.duplicated += [f"key {k[1]}: {sorted(ids)}" for k, ids in keys.items() if len(ids) > 1]
    v.duplicated += [f"{o}: {n} OrderPlaced" for o, n in placed.items() if n > 1]
    for order_id, row in orders.items():
        if row["status"] not in DECIDED and order_id not in dead:
            v.stuck.append(f"{order_id} {row['status']}")
    # a key refused every time it was tried (a double click may be refused once and taken once)
    refused_keys = {(op.user, op.key) for op in history.by(REFUSED)} - {
        (op.user, op.key) for op in history.ops if op.outcome != REFUSED
    }
    v.refused_but_created += [
        o for o, r in orders.items() if (r["user_id"], r["idempotency_key"]) in refused_keys
    ]

    # stock: nothing sold or held beyond what was stocked; never negative anywhere
    held = Counter[str]()
    for (status, sku), qty in lines.items():
        if status in ("CONFIRMED", "FULFILLED"):
            held[sku] += int(qty)
    for sku, units in held.items():
        if units > stocked.get(sku, 0):
            v.oversold.append(f"{sku}: {units} sold or held of {stocked.get(sku, 0)}")
    for level in await _stock_levels(services):
        if level["on_hand"] - level["reserved"] < 0 or level["reserved"] < 0:
            v.oversold.append(
                f"{level['sku']} v{level['version']}: published {level['on_hand']}/{level['reserved']}"
            )
    for sku, (on_hand, reserved) in pg_stock.items():
        if on_hand - reserved < 0:
            v.oversold.append(f"{sku}: PostgreSQL {on_hand}/{reserved}")

    # money taken for an order that did not go through is given back (or parked for an operator)
    payments: dict[str, set[str]] = defaultdict(set)
    for order_id, kind in trail:
        payments[order_id].add(kind)
    for order_id, kinds in payments.items():
        status = orders[order_id]["status"] if order_id in orders else None
        if status not in ("REJECTED", "PAYMENT_FAILED", "CANCELLED"):
            continue
        if "PaymentAuthorized" in kinds and not kinds & {"PaymentVoided", "PaymentRefunded"}:
            if "PaymentVoidFailed" not in kinds or order_id not in dead:
                v.voids_missing.append(f"{order_id} {status}: {sorted(kinds)}")

    # PostgreSQL equals the tables
    inventory = await table_values(services, "inventory")
    for sku, (on_hand, reserved) in pg_stock.items():
        value = inventory.get(sku)
        if value is None or tuple(value[:2]) != (on_hand, reserved):
            v.mismatched.append(f"{sku}: PostgreSQL {on_hand}/{reserved}, table {value}")
    sagas = await table_values(services, "sagas")
    for order_id, value in sagas.items():
        if value is None or order_id not in orders:
            continue
        status = value["saga"]["status"]
        if status != orders[order_id]["status"]:
            v.mismatched.append(
                f"{order_id}: PostgreSQL {orders[order_id]['status']}, saga {status}"
            )

    # one email per stage
    if emails:
        queued = Counter((o, t) for o, t, _ in notes)
        sent = {(o, t) for o, t, s in notes if s == "sent"}
        delivered: Counter[tuple[str, str]] = Counter()
        if mail is not None:
            delivered = Counter(
                (m["X-Orion-Order-Id"], m["X-Orion-Template"]) for m in list(mail.messages)
            )
        for order_id, row in orders.items():
            if row["status"] not in DECIDED:
                continue
            for template in ("order_received", STAGE_EMAIL[row["status"]]):
                if (order_id, template) not in sent or (
                    mail is not None and not delivered[(order_id, template)]
                ):
                    v.emails_missing.append(f"{order_id} {template}")
        v.emails_duplicated = sum(n - 1 for n in delivered.values() if n > 1) + sum(
            n - 1 for n in queued.values() if n > 1
        )
    v.dead_letters = len(dead)
    return v


async def _rows(store: SqlAlchemyStore, sql: str) -> list[Any]:
    async with store.engine.connect() as conn:
        return list((await conn.execute(text(sql))).all())
