"""Email delivery tracking: one row per message, unique by its idempotency key.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("idempotency_key", sa.String(300), nullable=False),
        sa.Column("order_id", sa.String(100)),
        sa.Column("sku", sa.String(64)),
        sa.Column("template", sa.String(64), nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("subject", sa.Text),
        sa.Column("context", JSONB, nullable=False),
        sa.Column("correlation_id", sa.String(200)),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("server", sa.String(300)),
        sa.Column("message_id", sa.String(300)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=_NOW),
        # A sender holds a message until then; a crashed sender's lease runs out and another takes it.
        sa.Column("locked_until", sa.DateTime(timezone=True)),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("idempotency_key", name="uq_notifications_idempotency_key"),
        sa.CheckConstraint("status IN ('queued', 'sent', 'failed')", name="ck_notifications_status"),
    )
    op.create_index("ix_notifications_order", "notifications", ["order_id", "created_at"])
    op.create_index(
        "ix_notifications_due", "notifications", ["next_attempt_at"],
        postgresql_where=sa.text("status = 'queued'"),
    )


def downgrade() -> None:
    op.drop_table("notifications")
