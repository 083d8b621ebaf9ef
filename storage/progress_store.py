"""What agent steps are doing right now, shared between the process executing them and the one showing them.

An agent step's answer streams in while the step runs, possibly on another replica than the one rendering
the run in Slack. The executing process appends what happened (a piece of text, a tool call starting or
ending) as numbered rows per ``(run, path, attempt)``; the rendering process reads them by id, in order,
from wherever it left off, so it can show the answer growing, or rebuild it whole after a restart.

Rows are transient: nothing durable depends on them (the step's output is committed with its result, and
the run's messages come from its events). The renderer deletes a run's rows when it is done with the run;
retention deletes what a crash left behind.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .database import Database
from .tables import agent_progress

#: ``started``: the agent began (``step_id``, ``agent``); ``text``: a piece of the answer; ``tool``: a tool
#: call changed state; ``rejected``: the answer so far did not fit the output model and is asked for again;
#: ``done``: the agent call ended (``context_id``); ``failed``: the agent call failed (``error``).
ProgressKind = Literal["started", "text", "tool", "rejected", "done", "failed"]


class NewProgress(BaseModel):
    run_id: str
    path: str
    attempt: int
    seq: int
    kind: ProgressKind
    data: dict[str, Any] | None = None


class ProgressRow(NewProgress):
    model_config = ConfigDict(frozen=True)

    id: int
    at: float


class ProgressStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def append(self, rows: Sequence[NewProgress]) -> None:
        """Add rows in one statement and one commit."""
        if not rows:
            return
        now = time.time()
        values = [r.model_dump() | {"at": now} for r in rows]

        async def fn(conn: AsyncConnection) -> None:
            await conn.execute(insert(agent_progress), values)

        await self.db.write(fn)

    async def read(self, run_id: str, after: int = 0, limit: int = 500) -> list[ProgressRow]:
        """The run's rows with ids above ``after``, oldest first."""

        async def fn(conn: AsyncConnection) -> list[ProgressRow]:
            query = (
                select(agent_progress)
                .where(agent_progress.c.run_id == run_id, agent_progress.c.id > after)
                .order_by(agent_progress.c.id)
                .limit(limit)
            )
            return [ProgressRow.model_validate(dict(r)) for r in (await conn.execute(query)).mappings()]

        return await self.db.read(fn)

    async def delete_run(self, run_id: str) -> int:
        async def fn(conn: AsyncConnection) -> int:
            result = await conn.execute(delete(agent_progress).where(agent_progress.c.run_id == run_id))
            return int(result.rowcount or 0)

        return await self.db.write(fn)


__all__ = ["NewProgress", "ProgressKind", "ProgressRow", "ProgressStore"]
