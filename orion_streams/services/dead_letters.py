"""Dead letters for operators: reading a `dead-letters` record into a row, and replaying a
fixed one to the topic it came from.

A dead letter carries the source record's value as text (agents/common.py `dead_letter`).
A replay sends those bytes again, with the same key, to the same topic: it can only succeed
if something outside the record changed (a product added to the catalog, a bug fixed, a
service back up). Where the record itself decides the outcome, the replay is refused before
anything is sent: a value that does not decode, a key that is not the message's, an order
the saga would refuse with the current catalog, a message on a topic that does not take it.
Emails given up on are not records of a topic: they are retried with
`POST /v1/notifications/{id}/retry`.

Every call is audited (actor, roles, correlation id, outcome) and idempotent: a dead letter
that was replayed answers `already_replayed` and is not sent again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from .. import records
from .. import topics as t
from ..domain import saga as saga_rules
from ..domain.catalog import Catalog
from ..domain.errors import ValidationFailed

log = logging.getLogger("orion.dead_letters")

# Where a replay may send a record: every topic of Orion's but the dead letters themselves.
REPLAYABLE = {spec.name: spec for spec in t.PIPELINE if spec is not t.DEAD_LETTERS}
# Reasons that depend on the record alone: the same bytes on the same topic fail again.
ALWAYS_FAILS = {"wrong_topic": "the message does not belong on its topic"}
# What the payload shows of a dead letter besides the source value (records.dead_letter).
_ENVELOPE = ("reason", "reason_class", "source_topic", "partition", "offset", "item", "key", "value", "at")
MAX_IDS = 100


def row_from_record(partition: int, offset: int, value: bytes | None, headers: Sequence[tuple[str, bytes]],
                    timestamp_ms: int) -> dict[str, Any]:
    """The `dead_letters` row of one record of the topic. A record Orion did not write (not
    JSON, or without a reason) is kept as it is, with the reason that it cannot be read."""
    text = (value or b"").decode("utf-8", "replace")
    dead_at = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    head = {name: raw.decode("utf-8", "replace") for name, raw in headers}
    row: dict[str, Any] = {
        "id": f"{partition}-{offset}", "reason": head.get("reason") or "unreadable dead letter",
        "reason_class": head.get("reason-class") or "unknown", "source_topic": head.get("source-topic") or "unknown",
        "source_partition": _int(head.get("source-partition")), "source_offset": _int(head.get("source-offset")),
        "source_item": _int(head.get("source-item")), "key": None, "payload": text[:100_000], "value": None,
        "correlation_id": _checked_correlation(head.get("correlation-id")), "dead_at": dead_at,
    }
    try:
        body = records.parse_json(value or b"")
    except Exception:  # noqa: BLE001 - not Orion's: kept as it is, never replayable
        return row
    if not isinstance(body, dict):
        return row
    for name, limit in (("reason", 10_000), ("reason_class", 64), ("source_topic", 249)):  # the columns' sizes
        if isinstance(body.get(name), str) and body[name]:
            row[name] = body[name][:limit]
    for name, column in (("partition", "source_partition"), ("offset", "source_offset"), ("item", "source_item")):
        if isinstance(body.get(name), int) and not isinstance(body.get(name), bool):
            row[column] = body[name]
    if isinstance(body.get("key"), str):
        row["key"] = body["key"]
    if isinstance(body.get("value"), str):
        row["value"] = body["value"]
        row["payload"] = body["value"][:100_000]
    else:  # an email given up on, or another kind: what it says of itself
        rest = {k: v for k, v in body.items() if k not in _ENVELOPE}
        row["payload"] = json.dumps(rest, ensure_ascii=False)[:100_000]
    return row


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _checked_correlation(text: str | None) -> str | None:
    return text if text and records.CORRELATION_ID.fullmatch(text) else None


def replayable(row: Mapping[str, Any]) -> str | None:
    """Why a dead letter can never be replayed as it is (None when it may be)."""
    if row["source_topic"] == "notifications":
        nid = _notification_id(row)
        return f"an email given up on: retry it with POST /v1/notifications/{nid}/retry" if nid else (
            "an email given up on: retry it from its notification")
    if row["source_topic"] not in REPLAYABLE:
        return f"it came from {row['source_topic']!r}, which is not a topic a replay can send to"
    if row["value"] is None:
        return "it does not carry the source record's value"
    if row["reason_class"] in ALWAYS_FAILS:
        return f"it would be dead-lettered again: {ALWAYS_FAILS[row['reason_class']]} ({row['reason']})"
    return None


def _notification_id(row: Mapping[str, Any]) -> str | None:
    try:
        body = records.parse_json(row["payload"].encode())
    except Exception:  # noqa: BLE001
        return None
    nid = body.get("notification_id") if isinstance(body, dict) else None
    return nid if isinstance(nid, str) else None


class WouldFail(str):
    """Why a record would be dead-lettered again; `unknown_sku` when a fresher catalog might
    know better (a product added since it was loaded)."""

    unknown_sku: bool = False


def would_fail(row: Mapping[str, Any], catalog: Catalog) -> WouldFail | None:
    """Why the record would be dead-lettered again if sent now (None: it would not, as far
    as the record and the current catalog can tell)."""
    never = replayable(row)
    if never is not None:
        return WouldFail(never)
    spec = REPLAYABLE[row["source_topic"]]
    try:
        message = records.decode(row["value"].encode(), catalog)
    except records.BadRecord as exc:
        why = WouldFail(f"it would be dead-lettered again: {exc}")
        why.unknown_sku = isinstance(exc, records.UnknownSku)
        return why
    own_key = getattr(message, spec.key, None)
    if own_key is not None and own_key != row["key"]:
        return WouldFail(f"it would be dead-lettered again: the message key must equal its {spec.key}")
    if type(message).__name__ == "OrderPlaced":
        try:
            saga_rules.start(message, catalog, saga_rules.Clock(records.utc_iso(0.0), 0.0))
        except ValidationFailed as exc:
            return WouldFail(f"it would be dead-lettered again: invalid order: {exc}")
    return None


@dataclass(frozen=True)
class Outcome:
    """What one replay came to: replayed (sent now), already_replayed, refused or not_found."""

    id: str
    outcome: str
    detail: str
    partition: int | None = None
    offset: int | None = None

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "outcome": self.outcome, "detail": self.detail,
                "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True)
class Caller:
    """Who asks for a replay, as the audit trail records it."""

    actor: str
    roles: str | None
    correlation_id: str | None


# Sends (topic, key, value, headers) and returns where it landed: (partition, offset).
Send = Callable[[str, bytes | None, bytes, list[tuple[str, bytes]]], Awaitable[tuple[int, int]]]
# Decides under the dead letter's lock: given its row (None: no such id), what to do.
Decide = Callable[[Mapping[str, Any] | None], Awaitable[Outcome]]


class Store(Protocol):
    async def replay(self, id: str, caller: Caller, decide: Decide) -> Outcome: ...


async def replay(
    ids: Sequence[str], caller: Caller, store: Store, catalog: Callable[[], Catalog],
    refresh_catalog: Callable[[], Awaitable[bool]], send: Send,
) -> list[Outcome]:
    """Replay each dead letter of `ids` in turn (see the module's docstring)."""
    results = []
    for id in dict.fromkeys(ids):  # the same id twice in one call is one replay

        async def decide(row: Mapping[str, Any] | None, id: str = id) -> Outcome:
            if row is None:
                return Outcome(id, "not_found", f"no dead letter {id}")
            if row["status"] == "replayed":
                return Outcome(id, "already_replayed", f"replayed at {records.utc_iso(row['replayed_at'])} "
                               f"by {row['replayed_by']}", row["replay_partition"], row["replay_offset"])
            why = would_fail(row, catalog())
            if why is not None and why.unknown_sku and await refresh_catalog():
                why = would_fail(row, catalog())  # a product added since the catalog was loaded
            if why is not None:
                return Outcome(id, "refused", why)
            headers = _headers(row, caller, id)
            key = row["key"].encode() if row["key"] is not None else None
            partition, offset = await send(row["source_topic"], key, row["value"].encode(), headers)
            log.info("dead letter %s replayed to %s[%d]@%d by %s", id, row["source_topic"], partition, offset, caller.actor)
            return Outcome(id, "replayed", f"sent to {row['source_topic']}", partition, offset)

        results.append(await store.replay(id, caller, decide))
    return results


def _headers(row: Mapping[str, Any], caller: Caller, id: str) -> list[tuple[str, bytes]]:
    """The replayed record says who sent it again, and keeps the original correlation id."""
    correlation = row["correlation_id"] or caller.correlation_id
    out = [("actor", caller.actor.encode()), ("replay-of", f"dead-letters/{id}".encode())]
    if caller.roles:
        out.append(("actor-roles", caller.roles.encode()))
    if correlation:
        out.append(("correlation-id", correlation.encode()))
    return out
