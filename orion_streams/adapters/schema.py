"""The PostgreSQL schema as SQLAlchemy Core tables; Alembic migrations create it."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

products = Table(
    "products",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("unit_price", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("active", Boolean, nullable=False, server_default="true"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # What metrics group SKUs by ("SKU class"): a handful of values, never one per SKU.
    Column("category", String(64), nullable=False, server_default="general"),
)

stock_levels = Table(
    "stock_levels",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column("on_hand", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),
    Column("low_stock_threshold", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

stock_adjustments = Table(
    "stock_adjustments",
    metadata,
    Column("adjustment_id", String(100), primary_key=True),
    Column("sku", String(64), nullable=False),
    Column("delta", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("detail", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

orders = Table(
    "orders",
    metadata,
    Column("order_id", String(100), primary_key=True),
    Column("user_id", String(200), nullable=False),
    Column("email", Text, nullable=False),
    Column("status", String(20), nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("failure_reason", Text),
    Column("version", Integer, nullable=False),
    Column("idempotency_key", String(200)),
    Column("request_hash", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("user_id", "idempotency_key", name="uq_orders_user_idempotency_key"),
    Index("ix_orders_user_created", "user_id", "created_at", "order_id"),
    Index("ix_orders_created", "created_at", "order_id"),
    # The orders in flight only (admission control counts them): see migration 0005.
    Index("ix_orders_in_flight", "created_at", postgresql_where=text("status in ('PENDING', 'RESERVED')")),
)

order_lines = Table(
    "order_lines",
    metadata,
    Column("order_id", String(100), ForeignKey("orders.order_id"), nullable=False),
    Column("sku", String(64), nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("unit_price", BigInteger, nullable=False),
    PrimaryKeyConstraint("order_id", "sku"),
)

order_events = Table(
    "order_events",
    metadata,
    Column("order_id", String(100), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("type", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("data", JSONB, nullable=False),
    Column("correlation_id", String(200)),
    Column("actor", String(300)),
    Column("actor_roles", String(200)),
    PrimaryKeyConstraint("order_id", "seq"),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("idempotency_key", String(300), nullable=False, unique=True),
    Column("order_id", String(100)),
    Column("sku", String(64)),
    Column("template", String(64), nullable=False),
    Column("recipient", Text, nullable=False),
    Column("subject", Text),
    Column("context", JSONB, nullable=False),
    Column("correlation_id", String(200)),
    Column("status", String(16), nullable=False, server_default="queued"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("server", String(300)),
    Column("message_id", String(300)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("locked_until", DateTime(timezone=True)),
    Column("sent_at", DateTime(timezone=True)),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(20), nullable=False),
    Column("scopes", JSONB, nullable=False),
    Column("created_by", String(300), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_used_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("reason_class", String(64), nullable=False),
    Column("source_topic", String(249), nullable=False),
    Column("source_partition", Integer),
    Column("source_offset", BigInteger),
    Column("source_item", Integer),
    Column("key", Text),
    Column("payload", Text, nullable=False),
    Column("value", Text),
    Column("correlation_id", String(200)),
    Column("dead_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False, server_default="open"),
    Column("replayed_at", DateTime(timezone=True)),
    Column("replayed_by", String(300)),
    Column("replay_partition", Integer),
    Column("replay_offset", BigInteger),
)

dead_letter_replays = Table(
    "dead_letter_replays",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("dead_letter_id", String(40), ForeignKey("dead_letters.id", ondelete="CASCADE"), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("actor", String(300), nullable=False),
    Column("actor_roles", String(200)),
    Column("correlation_id", String(200)),
    Column("outcome", String(20), nullable=False),
    Column("detail", Text),
)
