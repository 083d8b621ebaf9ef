"""The commit queue's batches on PostgreSQL when the connection drops under them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text

from storage import Database


async def test_on_postgresql_a_batch_whose_connection_dropped_commits_again_as_one_transaction(db_url: str) -> None:
    """Tried again whole on a new connection, not split into one transaction per writer (under a server that keeps
    dropping connections, a split batch seldom got through: a new connection, then a round trip per writer)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("a PostgreSQL backend that terminates its own connection")
    db = Database(db_url)
    await db.open()
    dropped: list[int] = []

    def writer(k: int) -> Any:
        async def insert(conn: Any) -> None:
            if k == 0 and not dropped:  # the first time only: the server drops this very connection mid-batch
                dropped.append(k)
                await conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
            await conn.execute(text("INSERT INTO batch_probe (k, tx) VALUES (:k, txid_current()) ON CONFLICT DO NOTHING"),
                               {"k": k})
        return insert

    async def rows(conn: Any) -> list[tuple[int, int]]:
        return [tuple(r) for r in (await conn.execute(text("SELECT k, tx FROM batch_probe ORDER BY k"))).all()]

    try:
        await db.write(lambda conn: conn.execute(text("CREATE TABLE batch_probe (k int PRIMARY KEY, tx bigint NOT NULL)")))

        await asyncio.gather(*(db.write(writer(k)) for k in range(5)))  # queued in one turn: one batch

        committed = await db.read(rows)
        assert dropped == [0]
        assert [k for k, _ in committed] == [0, 1, 2, 3, 4]
        assert len({tx for _, tx in committed}) == 1  # one transaction (split, each writer had its own)
    finally:
        await db.write(lambda conn: conn.execute(text("DROP TABLE IF EXISTS batch_probe")))
        await db.close()
