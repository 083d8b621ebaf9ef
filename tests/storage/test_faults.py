"""Which database errors the engine waits out (``transient_kind``) and which say a step's data cannot be stored
(``refused_data``), for errors real servers raise."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from storage.faults import refused_data, transient_kind
from tests.conftest import _admin_dsn


@pytest.fixture
async def pg(db_url: str) -> AsyncIterator[AsyncConnection]:
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's errors")
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()


async def failure(conn: AsyncConnection, *statements: str) -> BaseException:
    """What the last of ``statements`` raises (the others set the scene)."""
    *scene, last = statements
    for statement in scene:
        await conn.exec_driver_sql(statement)
    with pytest.raises(Exception) as caught:  # noqa: PT011 (what matters is how it is classified)
        await conn.exec_driver_sql(last)
    await conn.rollback()
    return caught.value


async def test_a_statement_cancelled_by_statement_timeout_is_retried_not_taken_for_bad_data(
    pg: AsyncConnection,
) -> None:
    exc = await failure(pg, "SET statement_timeout = '20ms'", "SELECT pg_sleep(2)")
    assert transient_kind(exc) is not None and not refused_data(exc)


async def test_a_statement_cancelled_by_lock_timeout_is_retried_not_taken_for_bad_data(
    pg: AsyncConnection, db_url: str
) -> None:
    other = await asyncpg.connect(_admin_dsn(db_url))  # another session holds the table (a migration, a DBA)
    try:
        async with other.transaction():
            await other.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
            exc = await failure(pg, "SET lock_timeout = '20ms'", "SELECT count(*) FROM runs")
    finally:
        await other.close()
    assert transient_kind(exc) is not None and not refused_data(exc)


async def test_on_postgresql_a_value_out_of_range_is_refused_data(pg: AsyncConnection) -> None:
    exc = await failure(pg, "SELECT 2147483648::int4")
    assert refused_data(exc) and transient_kind(exc) is None


async def test_on_postgresql_a_missing_table_is_neither_an_outage_nor_bad_data(pg: AsyncConnection) -> None:
    exc = await failure(pg, "SELECT * FROM no_such_table")
    assert transient_kind(exc) is None and not refused_data(exc)


async def test_on_sqlite_a_value_it_cannot_bind_is_refused_data_and_a_missing_table_is_not(sqlite_url: str) -> None:
    engine = create_async_engine(sqlite_url)
    try:
        async with engine.connect() as conn:
            with pytest.raises(Exception) as unbindable:  # noqa: PT011
                await conn.execute(text("SELECT :value"), {"value": object()})
            with pytest.raises(Exception) as missing:  # noqa: PT011
                await conn.exec_driver_sql("SELECT * FROM no_such_table")
    finally:
        await engine.dispose()
    assert refused_data(unbindable.value) and transient_kind(unbindable.value) is None
    assert not refused_data(missing.value) and transient_kind(missing.value) is None
    assert refused_data(sqlite3.IntegrityError("UNIQUE constraint failed: runs.id"))
