"""Dead letters as operators see them (an index of the `dead-letters` topic), the audit
trail of their replays, and an index of failed emails for the console's list.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        # "<partition>-<offset>" of the record in `dead-letters`: indexing it again is a no-op.
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("reason_class", sa.String(64), nullable=False),
        sa.Column("source_topic", sa.String(249), nullable=False),
        sa.Column("source_partition", sa.Integer),
        sa.Column("source_offset", sa.BigInteger),
        sa.Column("source_item", sa.Integer),
        sa.Column("key", sa.Text),
        sa.Column("payload", sa.Text, nullable=False),
        # Where a replay sends it: the source record's value, when the dead letter carries it.
        sa.Column("value", sa.Text),
        sa.Column("correlation_id", sa.String(200)),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="open"),
        sa.Column("replayed_at", sa.DateTime(timezone=True)),
        sa.Column("replayed_by", sa.String(300)),
        sa.Column("replay_partition", sa.Integer),
        sa.Column("replay_offset", sa.BigInteger),
    )
    op.create_index("ix_dead_letters_newest", "dead_letters", ["dead_at", "id"])
    op.create_index("ix_dead_letters_open", "dead_letters", ["dead_at", "id"], postgresql_where="status = 'open'")
    op.create_table(
        "dead_letter_replays",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("dead_letter_id", sa.String(40), sa.ForeignKey("dead_letters.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("actor", sa.String(300), nullable=False),
        sa.Column("actor_roles", sa.String(200)),
        sa.Column("correlation_id", sa.String(200)),
        # replayed, already_replayed or refused
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_dead_letter_replays_letter", "dead_letter_replays", ["dead_letter_id", "id"])
    # The console lists failed emails newest first; only those, so the index never holds history.
    op.create_index(
        "ix_notifications_failed", "notifications", ["updated_at", "id"], postgresql_where="status = 'failed'",
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_failed", table_name="notifications")
    op.drop_table("dead_letter_replays")
    op.drop_table("dead_letters")
