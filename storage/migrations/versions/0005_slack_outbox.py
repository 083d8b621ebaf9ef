"""The Slack outbox (one row per message the bot shows, with what Slack has taken) and shared pacing.

Approval messages recorded in ``slack_approvals`` move into the outbox as delivered approval cards.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    messages = op.create_table(
        "slack_messages",
        sa.Column("key", sa.String(length=600), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=True),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("channel_id", sa.String(length=40), nullable=False),
        sa.Column("thread_ts", sa.String(length=40), nullable=True),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("content", sa.JSON(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sent_version", sa.Integer(), nullable=False),
        sa.Column("ts", sa.String(length=40), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("attempt_started_at", sa.Float(), nullable=True),
        sa.Column("last_sent_at", sa.Float(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_slack_messages_run", "slack_messages", ["run_id", "seq"])
    op.create_index("ix_slack_messages_state", "slack_messages", ["state", "next_attempt_at"])
    op.create_index("ix_slack_messages_ts", "slack_messages", ["channel_id", "ts"])
    op.create_table(
        "slack_pacing",
        sa.Column("scope", sa.String(length=300), nullable=False),
        sa.Column("tat", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("scope"),
    )
    bind = op.get_bind()
    approvals = bind.execute(sa.text(
        "SELECT a.run_id, a.path, a.channel_id, a.message_ts, a.created_at, r.team_id, r.root_ts "
        "FROM slack_approvals a LEFT JOIN slack_runs r ON r.run_id = a.run_id"
    )).mappings().all()
    now = time.time()
    if approvals:
        op.bulk_insert(messages, [
            {"key": f"approval:{a['run_id']}:{a['path']}", "run_id": a["run_id"], "team_id": a["team_id"] or "",
             "channel_id": a["channel_id"], "thread_ts": a["root_ts"], "kind": "approval", "seq": 0,
             "content": None, "version": 1, "sent_version": 1, "ts": a["message_ts"], "state": "sent",
             "attempts": 1, "next_attempt_at": 0.0, "attempt_started_at": None, "last_sent_at": a["created_at"],
             "last_error": None, "created_at": a["created_at"], "updated_at": now}
            for a in approvals
        ])
    op.drop_table("slack_approvals")


def downgrade() -> None:
    op.create_table(
        "slack_approvals",
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("channel_id", sa.String(length=40), nullable=False),
        sa.Column("message_ts", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "path"),
    )
    op.drop_table("slack_pacing")
    op.drop_index("ix_slack_messages_ts", table_name="slack_messages")
    op.drop_index("ix_slack_messages_state", table_name="slack_messages")
    op.drop_index("ix_slack_messages_run", table_name="slack_messages")
    op.drop_table("slack_messages")
