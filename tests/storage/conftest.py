"""Fixtures of the storage tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from storage import Database


@pytest.fixture
async def databases(db_url: str) -> AsyncIterator[list[Database]]:
    """Two independent handles on one database, as two processes would have."""
    dbs = [Database(db_url), Database(db_url)]
    for db in dbs:
        await db.open()
    yield dbs
    for db in dbs:
        await db.close()
