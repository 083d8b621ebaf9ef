"""Shared fixtures: a database URL per test and an engine factory, on SQLite and (when configured) PostgreSQL.

PostgreSQL runs when ``THREADFLOW_TEST_POSTGRES_URL`` is set (``postgresql+asyncpg://postgres@127.0.0.1/test``):
the session creates one database of its own (``CREATE DATABASE tf_<random>``, dropped at the end) and each
test starts with it emptied.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# tests/workflows and tests/bot mirror the packages they test; put the project root first so that
# `import workflows` finds the package, not the test directory (which plain `pytest` would otherwise pick).
ROOT = Path(__file__).resolve().parents[1]
if sys.path[0] != str(ROOT):
    sys.path.insert(0, str(ROOT))

from storage import Database  # noqa: E402
from workflows import CommittedWorkflow, Engine  # noqa: E402

POSTGRES_ENV = "THREADFLOW_TEST_POSTGRES_URL"

#: Small leases and polls keep recovery, wake-ups and retries fast in tests.
FAST = {"lease_seconds": 2.0, "poll_interval": 0.05}


def _postgres_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


def _admin_dsn(url: str) -> str:
    """The asyncpg DSN of the configured URL (asyncpg does not understand ``+asyncpg``)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _database_url(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)


async def _admin(url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_admin_dsn(url))
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    from storage import Database

    db = Database(url)
    await db.open()
    await db.close()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str | None]:
    """A migrated PostgreSQL database of this test session's own, dropped at its end."""
    url = _postgres_url()
    if url is None:
        yield None
        return
    name = f"tf_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(url, f'CREATE DATABASE "{name}"'))
    try:
        asyncio.run(_migrate(_database_url(url, name)))
        yield _database_url(url, name)
    finally:
        asyncio.run(_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _empty(url: str) -> None:
    """Make the session's database empty again: what a fresh one would be, in milliseconds, not a second."""
    import asyncpg

    conn = await asyncpg.connect(_admin_dsn(url))
    try:
        # Connections a previous test left open must not hold locks (or see the next test's rows).
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        tables = [
            r["tablename"]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
            )
        ]
        if tables:
            await conn.execute(f"TRUNCATE {', '.join(chr(34) + t + chr(34) for t in tables)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    """A SQLite database file of this test's own."""
    return f"sqlite+aiosqlite:///{tmp_path / 'threadflow.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, sqlite_url: str, postgres_database: str | None) -> AsyncIterator[str]:
    """An empty, migrated database: a SQLite file in tmp_path, or the session's PostgreSQL database emptied."""
    if request.param == "sqlite":
        yield sqlite_url
        return
    if postgres_database is None:
        pytest.skip(f"PostgreSQL tests run when {POSTGRES_ENV} is set (e.g. postgresql+asyncpg://postgres@127.0.0.1/test).")
    await _empty(postgres_database)
    yield postgres_database


EngineFactory = Callable[..., Engine]


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """This test's database, opened (schema at head) and closed at the end."""
    database = Database(db_url)
    await database.open()
    yield database
    await database.close()


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[EngineFactory]:
    """``make = engine; e = make(wf1, wf2, lease_seconds=...)``: engines on this test's database, closed at the end."""
    made: list[Engine] = []

    def make(*workflows: CommittedWorkflow, **kwargs: Any) -> Engine:
        e = Engine.from_url(db_url, **(FAST | kwargs))
        e.register(*workflows)
        made.append(e)
        return e

    yield make
    for e in reversed(made):
        await e.close()
