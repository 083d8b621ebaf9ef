"""Workflow versions: each run records its workflow's version and fingerprint; live processes list theirs.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("workflow_version", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("workflow_fingerprint", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("stranded_at", sa.Float(), nullable=True))
    op.create_table(
        "served_versions",
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("workflow_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "fingerprint"),
    )
    op.create_index("ix_served_versions_fingerprint", "served_versions", ["fingerprint", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_served_versions_fingerprint", table_name="served_versions")
    op.drop_table("served_versions")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("stranded_at")
        batch_op.drop_column("workflow_fingerprint")
        batch_op.drop_column("workflow_version")
