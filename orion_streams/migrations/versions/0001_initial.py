"""Initial schema: catalog, stock levels, orders, lines and the audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("sku", sa.String(64), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("unit_price", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.CheckConstraint("unit_price >= 0", name="ck_products_price"),
    )
    op.create_table(
        "stock_levels",
        sa.Column("sku", sa.String(64), primary_key=True),
        sa.Column("on_hand", sa.BigInteger, nullable=False),
        sa.Column("reserved", sa.BigInteger, nullable=False),
        sa.Column("low_stock_threshold", sa.BigInteger, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        # The invariant, enforced once more where the money is counted.
        sa.CheckConstraint("reserved >= 0 AND on_hand - reserved >= 0", name="ck_stock_available"),
    )
    op.create_table(
        "stock_adjustments",
        sa.Column("adjustment_id", sa.String(100), primary_key=True),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("delta", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
    )
    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(100), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("total", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("failure_reason", sa.Text),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("request_hash", sa.String(64)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_orders_user_idempotency_key"),
    )
    op.create_index("ix_orders_user_created", "orders", ["user_id", "created_at", "order_id"])
    op.create_index("ix_orders_created", "orders", ["created_at", "order_id"])
    op.create_table(
        "order_lines",
        sa.Column("order_id", sa.String(100), sa.ForeignKey("orders.order_id"), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("unit_price", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("order_id", "sku"),
    )
    op.create_table(
        "order_events",
        sa.Column("order_id", sa.String(100), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("correlation_id", sa.String(200)),
        sa.Column("actor", sa.String(300)),
        sa.PrimaryKeyConstraint("order_id", "seq"),
    )
    # Append-only: the audit trail refuses updates and deletes.
    op.execute(
        """
        CREATE FUNCTION order_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'order_events is append-only'; END $$;
        """
    )
    op.execute(
        "CREATE TRIGGER order_events_no_change BEFORE UPDATE OR DELETE ON order_events "
        "FOR EACH ROW EXECUTE FUNCTION order_events_append_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS order_events_no_change ON order_events")
    op.execute("DROP FUNCTION IF EXISTS order_events_append_only()")
    for table in ("order_events", "order_lines", "orders", "stock_adjustments", "stock_levels", "products"):
        op.drop_table(table)
