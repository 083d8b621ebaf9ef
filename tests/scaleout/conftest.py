"""Fixtures of the replicas tests: several replicas race on PostgreSQL only."""

from __future__ import annotations

import pytest


@pytest.fixture
async def pg_url(db_url: str) -> str:
    if not db_url.startswith("postgresql"):
        pytest.skip("several replicas run on PostgreSQL only")
    return db_url
