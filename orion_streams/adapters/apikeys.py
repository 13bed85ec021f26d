"""Service API keys in PostgreSQL: only a SHA-256 of each key is kept.

A key is `orion_<random>` with 256 bits of randomness, shown once when created. Because
keys are random (not chosen by people), a plain SHA-256 is as safe as a slow hash and lets a
request be authenticated with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ..schemas import SCOPES
from . import schema as s
from .postgres import iso

KEY_PREFIX = "orion_"
# last_used_at is written at most this often per key, so busy keys cause no row contention.
TOUCH_EVERY = timedelta(seconds=60)

k = s.api_keys


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """What a presented key grants."""

    id: str
    name: str
    scopes: frozenset[str]


class ApiKeyStore:
    """Creates, lists, revokes and checks keys."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, name: str, scopes: Iterable[str], created_by: str) -> tuple[str, dict[str, Any]]:
        """A new key: returns the key itself (the only time it exists in clear) and its record."""
        scopes = sorted(set(scopes))
        unknown = set(scopes) - SCOPES
        if unknown:
            raise ValueError(f"unknown scopes: {', '.join(sorted(unknown))}")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = "ak_" + uuid.uuid4().hex[:16]
        row = {"id": key_id, "name": name, "key_hash": hash_key(key), "prefix": key[:12],
               "scopes": scopes, "created_by": created_by}
        async with self.engine.begin() as conn:
            created = (await conn.execute(k.insert().values(row).returning(k))).one()
        return key, _view(created._mapping)

    async def list(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(k).order_by(k.c.created_at, k.c.id))).all()
        return [_view(r._mapping) for r in rows]

    async def get(self, key_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(k).where(k.c.id == key_id))).first()
        return _view(row._mapping) if row is not None else None

    async def revoke(self, key_id: str) -> dict[str, Any] | None:
        """Revoke (idempotent); None when there is no such key."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(k).where(k.c.id == key_id, k.c.revoked_at.is_(None)).values(revoked_at=func.now())
            )
            row = (await conn.execute(select(k).where(k.c.id == key_id))).first()
        return _view(row._mapping) if row is not None else None

    async def check(self, key: str) -> ApiKey | None:
        """The key's grant if it exists and is not revoked; records when it was last used."""
        if not key.startswith(KEY_PREFIX) or len(key) > 200 or not key.isascii():
            return None
        digest = hash_key(key)
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(k).where(k.c.key_hash == digest, k.c.revoked_at.is_(None)))
            ).first()
        if row is None:
            return None
        if row.last_used_at is None or datetime.now(UTC) - row.last_used_at > TOUCH_EVERY:
            async with self.engine.begin() as conn:
                await conn.execute(update(k).where(k.c.id == row.id).values(last_used_at=func.now()))
        return ApiKey(row.id, row.name, frozenset(row.scopes))


def _view(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "prefix": row["prefix"],
        "scopes": list(row["scopes"]),
        "created_by": row["created_by"],
        "created_at": iso(row["created_at"]),
        "last_used_at": iso(row["last_used_at"]),
        "revoked_at": iso(row["revoked_at"]),
        "active": row["revoked_at"] is None,
    }
