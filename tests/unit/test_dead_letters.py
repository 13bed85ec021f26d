"""Dead letters for operators (services/dead_letters.py): reading a record of the topic into
a row, what a replay refuses, and the replay use case with a fake store and bus."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from orion_streams import records
from orion_streams.domain.catalog import Catalog, Product
from orion_streams.services import dead_letters as dl
from orion_streams.services.notifications import dead_letter_record

from .fakes import CATALOG, placed

AT_MS = 1_780_000_000_000


def dead(value: bytes, *, topic: str = "orders", key: str | None = "o-1", reason: str = "boom",
         kind: str = "bad_record", item: int | None = None, correlation: str | None = "c-1") -> tuple[bytes, list]:
    details: dict[str, Any] = {"partition": 2, "offset": 41, "key": key, "value": value.decode("utf-8", "replace")}
    where = [("source-partition", b"2"), ("source-offset", b"41")]
    if item is not None:
        details["item"] = item
        where.append(("source-item", str(item).encode()))
    return records.dead_letter(reason, kind, topic, "2026-12-04T10:00:00Z", details, where, correlation)


def row_of(value: bytes, **kwargs: Any) -> dict[str, Any]:
    body, headers = dead(value, **kwargs)
    row = dl.row_from_record(3, 17, body, headers, AT_MS)
    row["status"] = "open"
    return row


def order_bytes(order_id: str = "o-1", sku: str = "A") -> bytes:
    return records.encode(placed(order_id, ((sku, 1),)))


def test_a_record_of_the_topic_becomes_a_row_with_where_it_came_from() -> None:
    value = order_bytes()
    row = row_of(value, item=4)
    assert row["id"] == "3-17"
    assert (row["source_topic"], row["source_partition"], row["source_offset"], row["source_item"]) == ("orders", 2, 41, 4)
    assert (row["reason"], row["reason_class"], row["key"], row["correlation_id"]) == ("boom", "bad_record", "o-1", "c-1")
    assert row["value"] == row["payload"] == value.decode()
    assert row["dead_at"] == datetime.fromtimestamp(AT_MS / 1000, UTC)


def test_a_record_orion_did_not_write_is_kept_and_never_replayable() -> None:
    row = dl.row_from_record(0, 5, b"\xff not json", [("reason", b"x" * 3)], AT_MS)
    row["status"] = "open"
    assert row["value"] is None and row["payload"].endswith("not json")
    assert row["source_topic"] == "unknown"
    assert "not a topic a replay can send to" in (dl.replayable(row) or "")


def test_an_email_given_up_on_points_at_its_retry() -> None:
    from orion_streams.adapters.notification_store import Claimed

    claimed = Claimed("n-9", "k", "order_confirmed", ("a@example.com",), {}, "o-1", None, "c-2", 5)
    key, value, headers = dead_letter_record(claimed, "smtp refused", "2026-12-04T10:00:00Z")
    row = dl.row_from_record(1, 2, value, headers, AT_MS)
    row["status"] = "open"
    assert json.loads(row["payload"])["notification_id"] == "n-9"
    assert dl.replayable(row) == "an email given up on: retry it with POST /v1/notifications/n-9/retry"


@pytest.mark.parametrize(("value", "kwargs", "why"), [
    (b"{not json", {}, "it would be dead-lettered again: "),
    (order_bytes(sku="NEW"), {}, "unknown"),
    (order_bytes("o-2"), {"key": "o-1"}, "the message key must equal its order_id"),
    (order_bytes(), {"kind": "wrong_topic"}, "does not belong on its topic"),
    (order_bytes(), {"topic": "dead-letters"}, "not a topic a replay can send to"),
])
def test_what_would_fail_again_is_refused(value: bytes, kwargs: dict[str, Any], why: str) -> None:
    verdict = dl.would_fail(row_of(value, **kwargs), CATALOG)
    assert verdict is not None and why in verdict


def test_an_order_the_saga_refuses_would_fail_again() -> None:
    mixed = records.encode(placed("o-1", (("A", 1), ("D", 1))))  # EUR and USD in one order
    verdict = dl.would_fail(row_of(mixed), CATALOG)
    assert verdict is not None and "invalid order" in verdict


def test_a_fixed_record_would_not_fail() -> None:
    assert dl.would_fail(row_of(order_bytes()), CATALOG) is None
    verdict = dl.would_fail(row_of(order_bytes(sku="NEW")), CATALOG)
    assert verdict is not None and verdict.unknown_sku
    known = Catalog([*CATALOG.products(), Product("NEW", "New thing", 700)])
    assert dl.would_fail(row_of(order_bytes(sku="NEW")), known) is None


class FakeStore:
    """Rows by id; records every call as the real store's audit trail does."""

    def __init__(self, *rows: dict[str, Any]) -> None:
        self.rows = {row["id"]: row for row in rows}
        self.audit: list[tuple[str, str, str]] = []

    async def replay(self, id: str, caller: dl.Caller, decide: dl.Decide) -> dl.Outcome:
        row = self.rows.get(id)
        outcome = await decide(row)
        if row is None:
            return outcome
        if outcome.outcome == "replayed":
            row.update(status="replayed", replayed_at=datetime(2026, 12, 4, tzinfo=UTC), replayed_by=caller.actor,
                       replay_partition=outcome.partition, replay_offset=outcome.offset)
        self.audit.append((id, caller.actor, outcome.outcome))
        return outcome


class Bus:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, dict[str, bytes]]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> tuple[int, int]:
        self.sent.append((topic, key, value, dict(headers)))
        return 5, 100 + len(self.sent)


CALLER = dl.Caller("admin-1", "admin", "req-9")


async def run(store: FakeStore, bus: Bus, ids: list[str], catalog: Catalog = CATALOG,
              fresher: Catalog | None = None) -> list[dl.Outcome]:
    current = [catalog]

    async def refresh() -> bool:
        if fresher is None:
            return False
        current[0] = fresher
        return True

    return await dl.replay(ids, CALLER, store, lambda: current[0], refresh, bus.send)


async def test_a_replay_sends_the_value_again_once_and_audits_every_call() -> None:
    value = order_bytes()
    store, bus = FakeStore(row_of(value)), Bus()
    (first,) = await run(store, bus, ["3-17"])
    assert (first.outcome, first.partition, first.offset) == ("replayed", 5, 101)
    topic, key, sent, headers = bus.sent[0]
    assert (topic, key, sent) == ("orders", b"o-1", value)
    assert headers == {"actor": b"admin-1", "actor-roles": b"admin", "correlation-id": b"c-1",
                       "replay-of": b"dead-letters/3-17"}
    (again,) = await run(store, bus, ["3-17"])
    assert again.outcome == "already_replayed" and (again.partition, again.offset) == (5, 101)
    assert len(bus.sent) == 1
    assert store.audit == [("3-17", "admin-1", "replayed"), ("3-17", "admin-1", "already_replayed")]


async def test_refused_unknown_and_repeated_ids_send_nothing() -> None:
    poison = row_of(b"{not json")
    store, bus = FakeStore(poison), Bus()
    outcomes = await run(store, bus, ["3-17", "nope", "3-17"])
    assert [o.outcome for o in outcomes] == ["refused", "not_found"]
    assert bus.sent == []
    assert store.audit == [("3-17", "admin-1", "refused")]


async def test_an_unknown_sku_looks_at_a_fresher_catalog_before_refusing() -> None:
    store, bus = FakeStore(row_of(order_bytes(sku="NEW"))), Bus()
    (refused,) = await run(store, bus, ["3-17"])
    assert refused.outcome == "refused" and bus.sent == []
    fresher = Catalog([*CATALOG.products(), Product("NEW", "New thing", 700)])
    (replayed,) = await run(store, bus, ["3-17"], fresher=fresher)
    assert replayed.outcome == "replayed" and len(bus.sent) == 1


async def test_a_replay_without_a_correlation_id_uses_the_callers() -> None:
    store, bus = FakeStore(row_of(order_bytes(), correlation=None)), Bus()
    await run(store, bus, ["3-17"])
    assert bus.sent[0][3]["correlation-id"] == b"req-9"


def test_views_of_outcomes_name_where_the_record_landed() -> None:
    view: Mapping[str, Any] = dl.Outcome("3-17", "replayed", "sent to orders", 1, 2).view()
    assert view == {"id": "3-17", "outcome": "replayed", "detail": "sent to orders", "partition": 1, "offset": 2}
