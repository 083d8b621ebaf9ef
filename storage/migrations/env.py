"""Alembic environment: runs on the connection :func:`storage.migrations.upgrade_to_head` passes in."""

from __future__ import annotations

from alembic import context

from storage.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the programmatic path is supported
    raise RuntimeError("threadflow applies migrations itself at start; run `threadflow migrate`.")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
