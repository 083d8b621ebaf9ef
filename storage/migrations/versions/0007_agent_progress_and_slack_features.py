"""Agents in Slack: an agent step's live progress, what a workspace's Slack supports, runs in assistant threads.

- ``agent_progress``: what an agent step is doing right now (its answer so far, its tool calls), written by
  the process executing it and read by the one rendering the run in Slack (transient);
- ``slack_features``: per workspace, a feature Slack refused (streaming) or that is in use (the assistant view);
- ``slack_runs.thread_ts``: where a run's replies go when that is not its root message's thread.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_progress",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_agent_progress_run", "agent_progress", ["run_id", "id"])
    op.create_table(
        "slack_features",
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("feature", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("team_id", "feature"),
    )
    with op.batch_alter_table("slack_runs") as batch:
        batch.add_column(sa.Column("thread_ts", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("slack_runs") as batch:
        batch.drop_column("thread_ts")
    op.drop_table("slack_features")
    op.drop_index("ix_agent_progress_run", table_name="agent_progress")
    op.drop_table("agent_progress")
