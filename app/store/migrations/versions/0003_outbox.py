"""the outbox: scheduled and asynchronous sends on the messages table

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

PENDING = sa.text("send_at IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("send_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("scheduled_for", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("attempt_started_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("cancel_reason", sa.String(length=16), nullable=True))
        batch_op.add_column(
            sa.Column("quiet_hours", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("media_urls", sa.Text(), nullable=True))
        batch_op.create_index(
            "ix_messages_send_at",
            ["send_at"],
            unique=False,
            postgresql_where=PENDING,
            sqlite_where=PENDING,
        )
        batch_op.create_index(
            "ix_messages_caller_send_at",
            ["caller", "send_at"],
            unique=False,
            postgresql_where=PENDING,
            sqlite_where=PENDING,
        )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("keep_until", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_column("keep_until")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_caller_send_at")
        batch_op.drop_index("ix_messages_send_at")
        for column in (
            "media_urls",
            "quiet_hours",
            "cancel_reason",
            "attempts",
            "attempt_started_at",
            "scheduled_for",
            "send_at",
        ):
            batch_op.drop_column(column)
