"""The lease keeper's writer on PostgreSQL: one connection kept between renewals, replaced when it is gone."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import Database
from tests.conftest import _admin_dsn


@pytest.fixture
async def writer(db_url: str, databases: list[Database]) -> Any:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite's side writer keeps its one connection by itself")
    w = databases[0].side_writer(timeout=5.0)
    assert w is not None
    yield w
    await asyncio.to_thread(w.close)


async def backend_pid(conn: AsyncConnection) -> int:
    return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_renewals_use_one_connection_and_a_dropped_one_is_replaced_without_a_failure(
    writer: Any, db_url: str
) -> None:
    first = await asyncio.to_thread(writer.run, backend_pid)
    assert await asyncio.to_thread(writer.run, backend_pid) == first  # kept: no new login per renewal

    admin = await asyncpg.connect(_admin_dsn(db_url))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)  # a server restart, for this connection
    finally:
        await admin.close()

    replaced = await asyncio.to_thread(writer.run, backend_pid)  # no error: tried again on a new connection
    assert replaced != first
    assert await asyncio.to_thread(writer.run, backend_pid) == replaced


async def test_a_failure_that_is_not_the_connection_is_the_callers_and_not_run_twice(writer: Any) -> None:
    calls: list[int] = []

    async def refused(conn: AsyncConnection) -> None:
        calls.append(await backend_pid(conn))
        await conn.execute(text("SELECT 1 / 0"))

    first = await asyncio.to_thread(writer.run, backend_pid)
    with pytest.raises(Exception, match="division by zero"):
        await asyncio.to_thread(writer.run, refused)
    assert calls == [first]
    # The connection that failed is not trusted again; the next call works on a new one.
    assert await asyncio.to_thread(writer.run, backend_pid) != first


async def test_a_statement_that_times_out_on_a_live_connection_is_not_run_again(databases: list[Database], db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite's side writer keeps its one connection by itself")
    writer = databases[0].side_writer(timeout=0.5)
    assert writer is not None
    calls: list[int] = []

    async def slow(conn: AsyncConnection) -> None:
        calls.append(await backend_pid(conn))
        await conn.execute(text("SELECT pg_sleep(1.0)"))

    try:
        first = await asyncio.to_thread(writer.run, backend_pid)
        with pytest.raises(Exception):  # noqa: B017 (the driver's timeout, as SQLAlchemy wraps it)
            await asyncio.to_thread(writer.run, slow)
        assert calls == [first]  # slow, not dropped: the caller decides what to do, nothing is run twice
    finally:
        await asyncio.to_thread(writer.close)
