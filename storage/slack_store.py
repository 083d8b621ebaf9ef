"""Which Slack message shows which run and which suspension, and which Slack events were handled.

This is what lets a restarted bot keep updating the same messages and keeps retried events from being
answered twice.
"""

from __future__ import annotations

import time

from pydantic import BaseModel
from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .database import Database, insert_ignore
from .tables import events, runs, slack_approvals, slack_runs, slack_seen_events


class SlackRun(BaseModel):
    run_id: str
    team_id: str
    channel_id: str
    root_ts: str | None
    thread_id: str
    started_by: str | None
    last_event_id: int = 0
    created_at: float
    renderer: str | None = None
    renderer_expires_at: float | None = None


class SlackApproval(BaseModel):
    run_id: str
    path: str
    channel_id: str
    message_ts: str
    created_at: float


class SlackStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_run(self, run: SlackRun) -> None:
        async def op(conn: AsyncConnection) -> None:
            await conn.execute(insert(slack_runs).values(**run.model_dump()))

        await self.db.write(op)

    async def get_run(self, run_id: str) -> SlackRun | None:
        async def op(conn: AsyncConnection) -> SlackRun | None:
            row = (await conn.execute(select(slack_runs).where(slack_runs.c.run_id == run_id))).mappings().first()
            return SlackRun.model_validate(dict(row)) if row else None

        return await self.db.read(op)

    async def run_for_thread(self, thread_id: str) -> SlackRun | None:
        """The most recent run whose root message starts this Slack thread."""

        async def op(conn: AsyncConnection) -> SlackRun | None:
            q = select(slack_runs).where(slack_runs.c.thread_id == thread_id).order_by(slack_runs.c.created_at.desc())
            row = (await conn.execute(q.limit(1))).mappings().first()
            return SlackRun.model_validate(dict(row)) if row else None

        return await self.db.read(op)

    async def runs_needing_render(self, now: float | None = None) -> list[SlackRun]:
        """Runs shown in Slack with events not rendered yet and no live renderer (after a restart or a crash)."""
        now = time.time() if now is None else now
        latest = (
            select(func.max(events.c.id)).where(events.c.run_id == slack_runs.c.run_id).scalar_subquery()
        )

        async def op(conn: AsyncConnection) -> list[SlackRun]:
            q = (
                select(slack_runs)
                .join(runs, runs.c.id == slack_runs.c.run_id)
                .where(
                    or_(slack_runs.c.renderer.is_(None), slack_runs.c.renderer_expires_at < now),
                    or_(runs.c.status.not_in(("success", "failed", "canceled")), slack_runs.c.last_event_id < latest),
                )
            )
            return [SlackRun.model_validate(dict(r)) for r in (await conn.execute(q)).mappings()]

        return await self.db.read(op)

    async def claim_render(self, run_id: str, owner: str, lease: float) -> bool:
        """Become the one process rendering this run (compare-and-set on the render lease)."""
        now = time.time()

        async def op(conn: AsyncConnection) -> bool:
            res = await conn.execute(
                update(slack_runs)
                .where(
                    slack_runs.c.run_id == run_id,
                    or_(slack_runs.c.renderer.is_(None), slack_runs.c.renderer == owner,
                        slack_runs.c.renderer_expires_at < now),
                )
                .values(renderer=owner, renderer_expires_at=now + lease)
            )
            return bool(res.rowcount)

        return await self.db.write(op)

    async def renew_renders(self, owner: str, run_ids: list[str], lease: float) -> None:
        if not run_ids:
            return
        now = time.time()

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(
                update(slack_runs)
                .where(slack_runs.c.run_id.in_(run_ids), slack_runs.c.renderer == owner)
                .values(renderer_expires_at=now + lease)
            )

        await self.db.write(op)

    async def release_render(self, run_id: str, owner: str) -> None:
        async def op(conn: AsyncConnection) -> None:
            await conn.execute(
                update(slack_runs)
                .where(slack_runs.c.run_id == run_id, slack_runs.c.renderer == owner)
                .values(renderer=None, renderer_expires_at=None)
            )

        await self.db.write(op)

    async def save_offset(self, run_id: str, last_event_id: int) -> None:
        async def op(conn: AsyncConnection) -> None:
            await conn.execute(
                update(slack_runs)
                .where(slack_runs.c.run_id == run_id, slack_runs.c.last_event_id < last_event_id)
                .values(last_event_id=last_event_id)
            )

        await self.db.write(op)

    async def add_approval(self, approval: SlackApproval) -> bool:
        """Record the message showing a suspension; False if one was already posted (insert-if-absent)."""

        async def op(conn: AsyncConnection) -> bool:
            res = await conn.execute(insert_ignore(self.db, slack_approvals).values(**approval.model_dump()))
            return bool(res.rowcount)

        return await self.db.write(op)

    async def get_approval(self, run_id: str, path: str) -> SlackApproval | None:
        async def op(conn: AsyncConnection) -> SlackApproval | None:
            q = select(slack_approvals).where(slack_approvals.c.run_id == run_id, slack_approvals.c.path == path)
            row = (await conn.execute(q)).mappings().first()
            return SlackApproval.model_validate(dict(row)) if row else None

        return await self.db.read(op)

    async def first_time(self, key: str) -> bool:
        """Mark a Slack event/message as handled; True only for the first caller (insert-if-absent)."""
        now = time.time()

        async def op(conn: AsyncConnection) -> bool:
            res = await conn.execute(insert_ignore(self.db, slack_seen_events).values(key=key, seen_at=now))
            return bool(res.rowcount)

        return await self.db.write(op)
