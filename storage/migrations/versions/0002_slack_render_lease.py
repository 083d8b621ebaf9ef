"""Slack render lease: which process renders a run's progress, until when.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("slack_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("renderer", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("renderer_expires_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("slack_runs", schema=None) as batch_op:
        batch_op.drop_column("renderer_expires_at")
        batch_op.drop_column("renderer")
