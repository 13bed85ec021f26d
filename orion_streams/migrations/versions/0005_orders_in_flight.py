"""An index of the orders not yet decided, for admission control's reading of the load.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Holds only the orders in flight, so counting them costs what is in flight, not history.
    op.create_index(
        "ix_orders_in_flight", "orders", ["created_at"],
        postgresql_where="status in ('PENDING', 'RESERVED')",
    )


def downgrade() -> None:
    op.drop_index("ix_orders_in_flight", table_name="orders")
