"""inbound messages and the opt-out list

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 22:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_messages",
        sa.Column("message_uuid", sa.String(length=64), nullable=False),
        sa.Column("from_number", sa.String(length=16), nullable=False),
        sa.Column("to_number", sa.String(length=16), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("media_urls", sa.Text(), nullable=True),
        sa.Column("intent", sa.String(length=16), nullable=True),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("message_uuid"),
    )
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.create_index("ix_inbound_received", ["received_at"], unique=False)

    op.create_table(
        "optouts",
        sa.Column("number", sa.String(length=16), nullable=False),
        sa.Column("opted_out", sa.Boolean(), nullable=False),
        sa.Column("since", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=80), nullable=False),
        sa.PrimaryKeyConstraint("number"),
    )
    with op.batch_alter_table("optouts", schema=None) as batch_op:
        batch_op.create_index("ix_optouts_since", ["since", "number"], unique=False)

    op.create_table(
        "optout_history",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("number", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=80), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("reference", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("optout_history", schema=None) as batch_op:
        batch_op.create_index("ix_optout_history_number", ["number", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("optout_history", schema=None) as batch_op:
        batch_op.drop_index("ix_optout_history_number")
    op.drop_table("optout_history")
    with op.batch_alter_table("optouts", schema=None) as batch_op:
        batch_op.drop_index("ix_optouts_since")
    op.drop_table("optouts")
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_inbound_received")
    op.drop_table("inbound_messages")
