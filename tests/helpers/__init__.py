"""Small test helpers: waiting for a condition without blind sleeps, and reading a run's events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from workflows import Engine, WorkflowEvent


async def eventually(check: Callable[[], Awaitable[Any] | Any], *, timeout: float = 5.0, every: float = 0.01) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {check}")
        await asyncio.sleep(every)


async def collect(events: AsyncIterator[WorkflowEvent], *, timeout: float = 5.0) -> list[WorkflowEvent]:
    """Every event an ``engine.watch(...)`` iterator yields until it ends (at the run's final event)."""

    async def drain() -> list[WorkflowEvent]:
        return [ev async for ev in events]

    return await asyncio.wait_for(drain(), timeout)


async def event_types(engine: Engine, run_id: str) -> list[str]:
    """The types of a run's committed events, in order."""
    return [e.type for e in (await engine.details(run_id)).events]


async def status_of(engine: Engine, run_id: str) -> str:
    return (await engine.get_run(run_id)).status
