"""webhook deliveries: the claim's index leads with the status

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 07:00:00

The claim asks for `status = 'pending' AND next_attempt_at <= now ORDER BY next_attempt_at`.
With `next_attempt_at` alone indexed, SQLite's planner (which has no statistics) took the
`(status, created_at)` index for the equality and sorted every pending row at each claim,
so a claim's cost grew with the backlog. `(status, next_attempt_at)` answers the equality,
the range and the order from one index: a claim reads only the rows it takes.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_deliveries_due")
        batch_op.create_index(
            "ix_webhook_deliveries_due", ["status", "next_attempt_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_deliveries_due")
        batch_op.create_index("ix_webhook_deliveries_due", ["next_attempt_at"], unique=False)
