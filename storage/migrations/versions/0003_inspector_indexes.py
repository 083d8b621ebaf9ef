"""Indexes the run inspector's listing needs: newest first (optionally by status), and runs by Slack channel.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_created", ["created_at", "id"], unique=False)
        batch_op.create_index("ix_runs_status_created", ["status", "created_at", "id"], unique=False)
    with op.batch_alter_table("slack_runs", schema=None) as batch_op:
        batch_op.create_index("ix_slack_runs_channel", ["channel_id", "run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("slack_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_slack_runs_channel")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_status_created")
        batch_op.drop_index("ix_runs_created")
