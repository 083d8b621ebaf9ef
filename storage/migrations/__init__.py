"""Alembic migrations, applied at start by :func:`upgrade_to_head`.

Several processes may start at once (replicas on PostgreSQL, the bot and the CLI on SQLite): on
PostgreSQL an advisory lock serializes them; on SQLite the writer's ``BEGIN IMMEDIATE`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import MigrationError

HERE = Path(__file__).parent
_ADVISORY_LOCK_ID = 7_346_118_302


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    return cfg


def upgrade_sync(sync_conn: Any) -> None:
    """Upgrade on a sync connection inside a transaction (SQLite's writer thread; BEGIN IMMEDIATE serializes)."""
    try:
        _upgrade(sync_conn)
    except Exception as exc:
        raise MigrationError(f"Could not bring the database schema up to date: {exc}") from exc


def _upgrade(sync_conn: Any) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


async def upgrade_to_head(engine: AsyncEngine, dialect: str) -> None:
    try:
        async with engine.begin() as conn:
            if dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK_ID})
            await conn.run_sync(_upgrade)
    except Exception as exc:
        raise MigrationError(f"Could not bring the database schema up to date: {exc}") from exc


def current_revision_sync(sync_conn: Any) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(sync_conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
