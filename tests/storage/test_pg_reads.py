"""Reads on PostgreSQL: autocommit, no pre-ping (one round trip for a read by key), and still carried through
a server that dropped the pooled connections (the read fails once, is retried on a fresh connection)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from bench.wire import WireCounter
from storage import Database
from storage.runs import RunStore
from tests.conftest import _admin_dsn


@pytest.fixture
async def pg_db(db_url: str) -> AsyncIterator[tuple[Database, WireCounter]]:
    if not db_url.startswith("postgresql"):
        pytest.skip("what is sent to PostgreSQL")
    wire = WireCounter()
    wire.install()  # before the database opens: its connections are counted
    db = Database(db_url)
    try:
        await db.open()
        yield db, wire
    finally:
        wire.uninstall()
        await db.close()


async def _run(store: RunStore) -> str:
    now = time.time()
    await store.create_run({"id": "r1", "workflow_id": "wf", "status": "pending", "input": {"n": 1}, "created_at": now,
                            "updated_at": now}, [])
    return "r1"


async def test_on_postgresql_a_read_by_key_is_one_round_trip(pg_db: tuple[Database, WireCounter]) -> None:
    db, wire = pg_db
    store = RunStore(db)
    run_id = await _run(store)
    await store.get_run(run_id)  # prepared once per connection

    before = wire.snapshot()
    for _ in range(20):
        run = await store.get_run(run_id)
        assert run is not None and run.input == {"n": 1}
    sent = WireCounter.since(before, wire.snapshot())

    assert sent["round_trips"] == 20 and sent["simple_queries"] == 0  # no BEGIN/ROLLBACK, no ping


async def test_on_postgresql_reads_carry_on_after_the_server_dropped_the_pooled_connections(
    db_url: str, pg_db: tuple[Database, WireCounter]
) -> None:
    db, _ = pg_db
    store = RunStore(db)
    run_id = await _run(store)
    assert all(await asyncio.gather(*(store.list_runs() for _ in range(4))))  # a few connections in the pool
    faults: list[str] = []
    db.on_fault(lambda kind, new: faults.append(kind))
    admin = await asyncpg.connect(_admin_dsn(db_url))
    try:
        dropped = await admin.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    finally:
        await admin.close()
    assert dropped

    runs = await store.list_runs()
    assert [r.id for r in runs] == [run_id]
    assert faults and set(faults) == {"connection"}  # it met a dropped connection, and was retried
    assert [r.id for r in await store.list_runs()] == [run_id] and len(set(faults)) == 1
