"""The migrations create exactly the schema in storage/tables.py, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from storage import Database
from storage.migrations import head_revision
from storage.tables import metadata
from tests.helpers.system import threadflow


def _diff(sync_conn: Any) -> list[Any]:
    ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
    # The full-text search objects are created by raw SQL and are not in the metadata.
    return [d for d in compare_metadata(ctx, metadata) if "fts" not in repr(d)]


def _revision(sync_conn: Any) -> str | None:
    return MigrationContext.configure(sync_conn).get_current_revision()


async def test_migrated_schema_matches_the_tables(db_url: str) -> None:
    db = Database(db_url)
    await db.open()
    try:
        assert await db.read(lambda conn: conn.run_sync(_diff)) == []
        assert await db.read(lambda conn: conn.run_sync(_revision)) == head_revision()
    finally:
        await db.close()


async def test_opening_twice_is_harmless(db_url: str) -> None:
    for _ in range(2):
        db = Database(db_url)
        await db.open()
        await db.close()


def test_threadflow_migrate_prints_one_line_and_nothing_on_stderr(db_url: str, tmp_path: Path) -> None:
    """Before: the commit queue's task was left pending at exit ("Task was destroyed but it is pending!")."""
    for _ in range(2):  # creating the schema, then finding it up to date
        proc = threadflow(db_url, "migrate", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("Database is up to date (") and proc.stdout.count("\n") == 1
        assert proc.stderr == ""
