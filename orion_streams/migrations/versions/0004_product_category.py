"""A category per product: the SKU class of the reservation metrics.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "products", sa.Column("category", sa.String(64), nullable=False, server_default="general")
    )


def downgrade() -> None:
    op.drop_column("products", "category")
